package fanout

import (
	"context"
	"strconv"
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
	key    string
	fields []any // the XADD entry: m, pt, r
	size   int64
	ttl    time.Duration
}

// histOpts is what a history channel keeps.
type histOpts struct {
	size int
	ttl  time.Duration
}

// histCache answers "does this channel keep history, and how much" for
// the publish path without matching the namespace globs every time.
type histCache struct {
	// none is the revision known to keep no history at all, +1 (0: not
	// known): the common case answers from it without the lock, on every
	// publish and every delivery.
	none atomic.Int64

	mu  sync.Mutex
	rev int64
	set bool
	any bool // some namespace keeps history
	m   map[string]histOpts
}

const histCacheMax = 1 << 16

// lookup returns the history options of channel under config ac.
func (h *histCache) lookup(ac appliedDoc, channel string) (histOpts, bool) {
	if h.none.Load() == ac.rev+1 {
		return histOpts{}, false
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.set || h.rev != ac.rev {
		h.set, h.rev, h.m, h.any = true, ac.rev, map[string]histOpts{}, false
		for _, ns := range ac.doc.Namespaces {
			if ns.HistorySize > 0 {
				h.any = true
			}
		}
		if !h.any {
			h.none.Store(ac.rev + 1)
		}
	}
	if !h.any {
		return histOpts{}, false
	}
	if o, ok := h.m[channel]; ok {
		return o, o.size > 0
	}
	ns := ac.doc.For(channel)
	o := histOpts{size: ns.HistorySize, ttl: time.Duration(ns.HistoryTTL)}
	if len(h.m) >= histCacheMax {
		clear(h.m)
	}
	h.m[channel] = o
	return o, o.size > 0
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
func newHistArgs(channel string, data []byte, prevTS int64, replicas int, o histOpts) *histArgs {
	return &histArgs{key: historyKey(channel), fields: []any{"m", data, "pt", strconv.FormatInt(prevTS, 10), "r", replicas},
		size: int64(o.size), ttl: max(o.ttl, time.Millisecond)}
}

// queue adds the history commands of a publish to pipe; the caller adds
// the PUBLISH after them. The stream's TTL is set to 1.25 history_ttl at
// most every quarter history_ttl per node and channel, rather than on
// every message: a message then still lives at least history_ttl, for a
// fraction of the commands. The node's publisher goroutines share the
// record.
func (nc *nodeConn) queueHistory(ctx context.Context, pipe redis.Pipeliner, h *histArgs, now time.Time) *redis.StringCmd {
	x := pipe.XAdd(ctx, &redis.XAddArgs{Stream: h.key, MaxLen: h.size, Approx: true, Values: h.fields})
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
