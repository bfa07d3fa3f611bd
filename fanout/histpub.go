package fanout

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/pubmesh/pubmesh/clusterconfig"
)

// Redis keys of history (docs/history.md): the stream a node keeps of a
// channel's messages, the streams it adopted from drained nodes, and the
// set that lists those.
const (
	historyKeyPrefix = "pm:h:"
	adoptedSetPrefix = "pm:hx:"
)

func historyKey(channel string) string    { return historyKeyPrefix + channel }
func adoptedSetKey(channel string) string { return adoptedSetPrefix + channel }

// A publish to a history channel sends, in one pipeline on one
// connection, XADD (the message, the time of its predecessor, the
// replicas; the stream trimmed approximately, MAXLEN ~, which is cheap),
// PEXPIRE (the stream lives history_ttl after its last message) and
// PUBLISH. Redis runs a connection's commands in order, so when a
// subscriber gets the message it is already in history. If the XADD fails
// (a full node with nothing left to evict) the PUBLISH still goes: the
// message is delivered live without history, counted, and a recovery
// across it says recovered:false (its successor's chain link is missing).
// Readers keep each stream's newest history_size entries younger than
// history_ttl, so both bounds are exact as seen from a reader.

// histArgs are a publish's history arguments; nil for a channel without
// history.
type histArgs struct {
	key  string
	ttl  time.Duration
	xadd [12]any // the whole XADD command; its entry: m, pt, r
}

// histOpts is what a history channel keeps.
type histOpts struct {
	size int
	ttl  time.Duration
	// The channel's stream key and XADD arguments, converted to any once
	// per channel and configuration revision (the cache keeps them) rather
	// than on every publish: each conversion of a string or a large
	// integer allocates.
	key     string
	keyArg  any
	sizeArg any
}

func newHistOpts(channel string, size int, ttl time.Duration) histOpts {
	o := histOpts{size: size, ttl: ttl}
	if size > 0 {
		o.key = historyKey(channel)
		o.keyArg, o.sizeArg = o.key, int64(size)
	}
	return o
}

// histCache answers "does this channel keep history, and how much" for
// the publish and delivery paths without matching the namespace globs
// every time. Every publish and every delivery asks, from many goroutines
// at once, so a hit takes no lock: the answers of one configuration
// revision live in a sync.Map, replaced as a whole when the revision
// changes or the map is full.
type histCache struct {
	cur atomic.Pointer[histGen]
	mu  sync.Mutex // serializes replacing cur
}

// histGen is the cache of one configuration revision.
type histGen struct {
	rev int64
	any bool // some namespace keeps history
	n   atomic.Int64
	m   sync.Map // channel -> histOpts
}

const histCacheMax = 1 << 16

// lookup returns the history options of channel under config ac.
func (h *histCache) lookup(ac appliedDoc, channel string) (histOpts, bool) {
	g := h.cur.Load()
	if g == nil || g.rev != ac.rev {
		g = h.renew(ac, g)
	}
	if !g.any {
		return histOpts{}, false
	}
	if v, ok := g.m.Load(channel); ok {
		o := v.(histOpts)
		return o, o.size > 0
	}
	ns := ac.doc.For(channel)
	o := newHistOpts(channel, ns.HistorySize, time.Duration(ns.HistoryTTL))
	if g.n.Add(1) > histCacheMax {
		h.renew(ac, g)
	} else {
		g.m.Store(channel, o)
	}
	return o, o.size > 0
}

// renew replaces the generation seen as old (nil: none yet) by an empty
// one for ac, unless another goroutine did already.
func (h *histCache) renew(ac appliedDoc, old *histGen) *histGen {
	h.mu.Lock()
	defer h.mu.Unlock()
	if g := h.cur.Load(); g != old && g != nil && g.rev == ac.rev {
		return g
	}
	g := &histGen{rev: ac.rev}
	for _, ns := range ac.doc.Namespaces {
		if ns.HistorySize > 0 {
			g.any = true
		}
	}
	h.cur.Store(g)
	return g
}

// appliedDoc is the configuration a lookup runs against.
type appliedDoc struct {
	rev int64
	doc *clusterconfig.Document
}

func (c *Client) appliedDoc() appliedDoc {
	ac := c.ClusterConfig()
	return appliedDoc{rev: ac.Revision, doc: ac.Doc}
}

// historyOf returns the history options of channel now.
func (c *Client) historyOf(channel string) (histOpts, bool) {
	return c.hist.lookup(c.appliedDoc(), channel)
}

// newHistArgs builds the history part of one publish.
//
// Built whole here, once, in one allocation with its arguments:
// go-redis's XAddArgs would copy them into a second slice on every publish.
func newHistArgs(data []byte, prevTS int64, replicas int, o histOpts) *histArgs {
	return &histArgs{key: o.key, ttl: max(o.ttl, time.Millisecond),
		xadd: [12]any{"xadd", o.keyArg, "maxlen", "~", o.sizeArg, "*", "m", data, "pt", prevTS, "r", replicas}}
}

// queue adds the history commands of a publish to pipe; the caller adds
// the PUBLISH after them. The stream's TTL is set to 1.25 history_ttl at
// most every quarter history_ttl per node and channel, rather than on
// every message: a message then still lives at least history_ttl, for a
// fraction of the commands. The node's publisher goroutines share the
// record.
func (nc *nodeConn) queueHistory(ctx context.Context, pipe redis.Pipeliner, h *histArgs, now time.Time) *redis.Cmd {
	x := pipe.Do(ctx, h.xadd[:]...)
	nc.expiresMu.Lock()
	if nc.expires == nil || len(nc.expires) >= histCacheMax {
		nc.expires = map[string]time.Time{}
	}
	last, ok := nc.expires[h.key]
	due := !ok || now.Sub(last) >= h.ttl/4
	if due {
		nc.expires[h.key] = now
	}
	nc.expiresMu.Unlock()
	if due {
		pipe.PExpire(ctx, h.key, h.ttl+h.ttl/4)
	}
	return x
}

// historyFailed counts a history append the node refused while its
// PUBLISH went through; the first of a run of failures is logged.
func (nc *nodeConn) historyFailed(err error) {
	nc.c.m.historyAppendErrors.Inc()
	if nc.histErrLogged.CompareAndSwap(false, true) {
		nc.c.log.Warn("fanout: a node refused a history append; the message went out live without history (a recovery across it will say recovered:false)",
			"node", nc, "err", err)
	}
}
