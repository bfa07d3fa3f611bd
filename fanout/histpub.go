package fanout

import (
	"strconv"
	"strings"
	"sync"
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

// appendScript appends a message to its channel's stream and publishes it,
// in one step, so a message subscribers get is in history and the other
// way round. TIME is the node's clock, for the age bound (MINID).
//
// KEYS[1] the stream; ARGV: channel, data, prev ts, replicas, history
// size, history ttl (ms).
var appendScript = redis.NewScript(`
local t = redis.call('TIME')
local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[5], '*', 'm', ARGV[2], 'pt', ARGV[3], 'r', ARGV[4])
redis.call('XTRIM', KEYS[1], 'MINID', '~', tostring(ms - tonumber(ARGV[6])))
redis.call('PEXPIRE', KEYS[1], ARGV[6])
return redis.call('PUBLISH', ARGV[1], ARGV[2])
`)

// histArgs are a publish's history arguments; nil for a channel without
// history.
type histArgs struct {
	key  string
	args []any // the script's ARGV
}

// histOpts is what a history channel keeps.
type histOpts struct {
	size int
	ttl  time.Duration
}

// histCache answers "does this channel keep history, and how much" for
// the publish path without matching the namespace globs every time.
type histCache struct {
	mu  sync.Mutex
	rev int64
	set bool
	any bool // some namespace keeps history
	m   map[string]histOpts
}

const histCacheMax = 1 << 16

// lookup returns the history options of channel under config ac.
func (h *histCache) lookup(ac appliedDoc, channel string) (histOpts, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.set || h.rev != ac.rev {
		h.set, h.rev, h.m, h.any = true, ac.rev, map[string]histOpts{}, false
		for _, ns := range ac.doc.Namespaces {
			if ns.HistorySize > 0 {
				h.any = true
			}
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

// newHistArgs builds the script arguments of one publish.
func newHistArgs(channel string, data []byte, prevTS int64, replicas int, o histOpts) *histArgs {
	ttl := max(o.ttl.Milliseconds(), 1)
	return &histArgs{key: historyKey(channel), args: []any{channel, data, strconv.FormatInt(prevTS, 10), replicas, o.size, ttl}}
}

// retryNoScript sends again, with the script's body, the history publishes
// of a batch that failed because the node did not have the script yet (a
// new run, or its cache flushed): Eval loads it. They go in their order,
// in one pipeline, before any later batch, so per-channel order holds.
func (nc *nodeConn) retryNoScript(batch []*pubReq, cmds []redis.Cmder, err error) error {
	var again []int
	for i, r := range batch {
		if r.hist != nil && redis.HasErrorPrefix(cmds[i].Err(), "NOSCRIPT") {
			again = append(again, i)
		}
	}
	if len(again) == 0 {
		return err
	}
	pipe := nc.rdb.Pipeline()
	for _, i := range again {
		r := batch[i]
		cmds[i] = appendScript.Eval(nc.ctx, pipe, []string{r.hist.key}, r.hist.args...)
	}
	_, perr := pipe.Exec(nc.ctx)
	if err != nil && len(again) < len(batch) {
		return err
	}
	return perr
}

// isOOM reports whether err is Redis refusing a write because it is full.
func isOOM(err error) bool {
	return strings.Contains(err.Error(), "OOM command not allowed")
}
