package broker

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"hash/fnv"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/pubmesh/pubmesh/discovery"
	"github.com/pubmesh/pubmesh/internal/respguard"
)

// This file is a drain's history hand-off (docs/history.md, "Joins, drains,
// crashes"): once no client publishes to the draining node any more and its
// output buffers are flushed (the DrainGate), the agent copies each of its
// history streams to one of the other ready nodes, entries and ids
// unchanged, with the TTL they have left, and lists the copy in that node's
// set of adopted streams for the channel. Then it ends its run in etcd,
// handed off if every stream was copied. It runs on the run goroutine,
// before the node's key is deleted and its Redis stopped.
//
// Keys (on each node):
//
//	pm:h:<channel>            the node's own stream of the channel
//	pm:ha:<run_id>:<channel>  a stream adopted from the drained run run_id
//	pm:hx:<channel>           the set of the channel's adopted streams on this node
//
// The node's own pm:h:<channel> becomes pm:ha:<its run_id>:<channel> on the
// target; an adopted stream keeps its name (and so its original run).
const (
	historyPrefix = "pm:h:"
	adoptedPrefix = "pm:ha:"
	adoptedSet    = "pm:hx:"
)

// handoffChunk is how many entries one XRANGE reads and one pipeline of
// XADDs writes.
const handoffChunk = 1000

// handoffWorkers is how many streams a hand-off copies at once.
const handoffWorkers = 16

// errNoPeer: the last node of a cluster has nowhere to hand its history to.
var errNoPeer = errors.New("no other ready node to hand the history to")

// adoptScript finishes the copy of a stream on the target, atomically: the
// copy gets its TTL, is listed in the channel's set of adopted streams, and
// the set lives at least as long as it. The set's TTL only ever grows, so
// two drains handing off to one node at once cannot shorten it.
// KEYS[1]: the copy, KEYS[2]: the set; ARGV[1]: the TTL in milliseconds.
var adoptScript = redis.NewScript(`
if redis.call('PEXPIRE', KEYS[1], ARGV[1]) == 0 then
  return redis.error_reply('the copied stream is gone from the target (evicted?)')
end
redis.call('SADD', KEYS[2], KEYS[1])
if redis.call('PTTL', KEYS[2]) < tonumber(ARGV[1]) then
  redis.call('PEXPIRE', KEYS[2], ARGV[1])
end
return 1
`)

// handoffResult sums up one hand-off.
type handoffResult struct {
	streams int   // streams found
	copied  int   // streams copied completely
	entries int   // entries copied
	err     error // why not every stream was copied
}

// handOff hands the node's history off to the other ready nodes and ends
// its run: handed off if every stream was copied (or there was none), not
// handed off otherwise, with a warning, since recoveries across this run
// will then say recovered:false. It is bounded by DrainTimeout of its own
// (after the DrainGate's), by bound (Shutdown's context) and by ctx.
func (a *Agent) handOff(ctx context.Context, s *runState, bound context.Context) {
	if s.runs.id == "" {
		return // no recorded run: nothing was published here
	}
	hctx, cancel := context.WithTimeout(bound, a.cfg.DrainTimeout)
	defer cancel()
	stop := context.AfterFunc(ctx, cancel)
	defer stop()
	t0 := time.Now()
	res := a.copyHistory(hctx, s)
	took := time.Since(t0).Round(time.Millisecond)
	complete := res.err == nil && res.copied == res.streams
	switch {
	case complete:
		a.log.Info("history handed off", "run_id", s.runs.id, "streams", res.copied, "entries", res.entries, "took", took)
	case errors.Is(res.err, errNoPeer):
		// The last node of a cluster that stops as a whole (pubmesh dev,
		// Ctrl-C): expected, and said once, without alarm.
		a.log.Info("history not handed off: no other ready node (the run ends without hand-off; recoveries across it will say recovered:false)",
			"run_id", s.runs.id, "streams", res.streams)
	default:
		a.log.Warn("history hand-off incomplete: the run ends without hand-off, and recoveries across it will say recovered:false",
			"run_id", s.runs.id, "streams", res.streams, "copied", res.copied, "entries", res.entries, "took", took, "err", res.err)
	}
	if a.cfg.Attach != "" && complete {
		// An attached Redis outlives the agent, and its run with it: a
		// later agent (a rolling restart of agents) takes the same run up
		// again, which an ended run forbids. Its history is on the other
		// nodes too, so nothing is lost if it never comes back.
		a.log.Info("attached redis keeps running: its history run stays open", "run_id", s.runs.id)
		s.runs.id = ""
		return
	}
	a.endRun(context.Background(), s, time.Now(), complete)
}

// copyHistory copies every history stream of the node to the other ready
// nodes.
func (a *Agent) copyHistory(ctx context.Context, s *runState) handoffResult {
	var res handoffResult
	src := redis.NewClient(a.sourceOptions(s))
	defer src.Close()
	keys, err := scanHistory(ctx, src)
	if err != nil {
		res.err = fmt.Errorf("list the history streams: %w", err)
		return res
	}
	res.streams = len(keys)
	if len(keys) == 0 {
		return res
	}
	fail := func(err error) handoffResult {
		a.m.handoffErrors.Add(float64(res.streams - res.copied))
		res.err = err
		return res
	}
	nodes, _, err := a.reg.List(ctx)
	if err != nil {
		return fail(fmt.Errorf("list the nodes: %w", err))
	}
	var peers []discovery.Node // sorted by id, as List returns them
	for _, n := range nodes {
		if n.State == discovery.StateReady && n.ID != a.cfg.ID {
			peers = append(peers, n)
		}
	}
	if len(peers) == 0 {
		return fail(errNoPeer)
	}
	fallback := longestHistoryTTL(s.conf.current().Doc)
	var mu sync.Mutex // guards dsts, bad, res and the metrics' consistency
	dsts := map[string]*redis.Client{}
	defer func() {
		for _, c := range dsts {
			c.Close()
		}
	}()
	bad := map[string]error{} // peers that failed once are not tried again
	// peer returns the client for p, or the error that ruled it out.
	peer := func(p discovery.Node) (*redis.Client, error) {
		mu.Lock()
		defer mu.Unlock()
		if err, ok := bad[p.ID]; ok {
			return nil, err
		}
		if dst, ok := dsts[p.ID]; ok {
			return dst, nil
		}
		opt, err := a.peerOptions(p)
		if err != nil {
			bad[p.ID] = err
			return nil, err
		}
		dst := redis.NewClient(opt)
		dsts[p.ID] = dst
		return dst, nil
	}
	copyOne := func(key string) {
		channel, dstKey, _ := handoffKey(key, s.runs.id)
		var lastErr error
		for _, p := range targetOrder(peers, channel) {
			dst, err := peer(p)
			if err != nil {
				lastErr = err
				continue
			}
			n, err := copyStream(ctx, src, dst, key, dstKey, channel, fallback)
			a.m.handoffEntries.Add(float64(n))
			mu.Lock()
			res.entries += n
			if err != nil {
				lastErr = fmt.Errorf("%s to node %s (%s): %w", key, p.ID, p.Addr, err)
				bad[p.ID] = lastErr
				mu.Unlock()
				a.log.Warn("history hand-off: cannot copy a stream; trying another node", "err", lastErr)
				continue
			}
			res.copied++
			mu.Unlock()
			a.m.handoffStreams.Inc()
			a.log.Debug("history stream handed off", "key", key, "to", p.ID, "as", dstKey, "entries", n)
			return
		}
		a.m.handoffErrors.Inc()
		mu.Lock()
		res.err = lastErr
		mu.Unlock()
	}
	// Streams are copied handoffWorkers at a time: each copy is a few round
	// trips, so one after another a node with thousands of channels would
	// spend its DrainTimeout waiting on the network.
	keyc := make(chan string)
	var wg sync.WaitGroup
	for range min(handoffWorkers, len(keys)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for key := range keyc {
				copyOne(key)
			}
		}()
	}
	left := 0
	for i, key := range keys {
		if ctx.Err() != nil {
			left = len(keys) - i
			break
		}
		select {
		case keyc <- key:
		case <-ctx.Done():
			left = len(keys) - i
		}
		if left > 0 {
			break
		}
	}
	close(keyc)
	wg.Wait()
	if left > 0 {
		a.m.handoffErrors.Add(float64(left))
		res.err = fmt.Errorf("%d of %d streams left: %w", left, len(keys), context.Cause(ctx))
	}
	return res
}

// scanHistory lists the node's history streams (its own and adopted ones),
// sorted.
func scanHistory(ctx context.Context, rdb *redis.Client) ([]string, error) {
	seen := map[string]bool{}
	var cursor uint64
	for {
		keys, next, err := rdb.ScanType(ctx, cursor, "pm:h*", 1000, "stream").Result()
		if err != nil {
			return nil, err
		}
		for _, k := range keys {
			if _, _, ok := handoffKey(k, "x"); ok {
				seen[k] = true // SCAN may return a key twice
			}
		}
		if next == 0 {
			break
		}
		cursor = next
	}
	keys := make([]string, 0, len(seen))
	for k := range seen {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys, nil
}

// handoffKey returns the channel of the history stream key and the key its
// copy gets on the target node: an own stream is named after runID there,
// an adopted one keeps its name. ok is false for a key that is neither.
func handoffKey(key, runID string) (channel, dst string, ok bool) {
	if rest, found := strings.CutPrefix(key, adoptedPrefix); found {
		run, ch, found := strings.Cut(rest, ":")
		if !found || run == "" || ch == "" {
			return "", "", false
		}
		return ch, key, true
	}
	if ch, found := strings.CutPrefix(key, historyPrefix); found && ch != "" {
		return ch, adoptedPrefix + runID + ":" + ch, true
	}
	return "", "", false
}

// targetOrder is the order in which peers (sorted by id) are tried for a
// channel's stream: from a hash of the channel on, so that a drain spreads
// its channels over the other nodes, and the streams of one channel (its
// own and adopted ones) go to the same node.
func targetOrder(peers []discovery.Node, channel string) []discovery.Node {
	h := fnv.New32a()
	h.Write([]byte(channel))
	i := int(h.Sum32() % uint32(len(peers)))
	return slices.Concat(peers[i:], peers[:i])
}

// copyStream copies the stream srcKey of src to dstKey on dst, entries and
// ids unchanged, in chunks of handoffChunk (one pipeline of XADDs each),
// then gives the copy the TTL the source has left and lists it in the
// channel's pm:hx set. A copy that was interrupted before (a drain that
// timed out, then another drain of the same run) resumes after the last
// entry the target has. It returns how many entries it copied.
func copyStream(ctx context.Context, src, dst *redis.Client, srcKey, dstKey, channel string, fallback time.Duration) (int, error) {
	pttl, err := src.Do(ctx, "PTTL", srcKey).Int64()
	if err != nil {
		return 0, fmt.Errorf("PTTL: %w", err)
	}
	var ttl time.Duration
	switch {
	case pttl == -2:
		return 0, nil // expired since the SCAN: nothing left to hand off
	case pttl < 0:
		// A stream without a TTL was not written by pubmesh's script; its
		// copy keeps the longest history_ttl rather than forever.
		ttl = fallback
	default:
		ttl = time.Duration(pttl) * time.Millisecond
	}
	deadline := time.Now().Add(ttl)
	start, have := "-", false
	last, err := dst.Do(ctx, "XREVRANGE", dstKey, "+", "-", "COUNT", 1).Slice()
	if err != nil && !errors.Is(err, redis.Nil) {
		return 0, fmt.Errorf("XREVRANGE on the target: %w", err)
	}
	if es, err := parseEntries(last); err != nil {
		return 0, fmt.Errorf("XREVRANGE on the target: %w", err)
	} else if len(es) > 0 {
		start, have = "("+es[0].id, true
	}
	n := 0
	for {
		rows, err := src.Do(ctx, "XRANGE", srcKey, start, "+", "COUNT", handoffChunk).Slice()
		if err != nil && !errors.Is(err, redis.Nil) {
			return n, fmt.Errorf("XRANGE: %w", err)
		}
		es, err := parseEntries(rows)
		if err != nil {
			return n, fmt.Errorf("XRANGE: %w", err)
		}
		if len(es) == 0 {
			break
		}
		ms := time.Until(deadline).Milliseconds()
		if ms <= 0 {
			return n, nil // the source has expired meanwhile, and so would the copy
		}
		pipe := dst.Pipeline()
		for _, e := range es {
			pipe.Do(ctx, append([]any{"XADD", dstKey, e.id}, e.fields...)...)
		}
		// The copy expires even if the hand-off stops half-way.
		pipe.Do(ctx, "PEXPIRE", dstKey, ms)
		if _, err := pipe.Exec(ctx); err != nil {
			return n, fmt.Errorf("XADD on the target: %w", err)
		}
		n += len(es)
		have = true
		start = "(" + es[len(es)-1].id
		if len(es) < handoffChunk {
			break // the last chunk: no need to ask again
		}
	}
	if !have {
		return 0, nil // an empty stream: nothing to hand off
	}
	ms := time.Until(deadline).Milliseconds()
	if ms <= 0 {
		return n, nil
	}
	if err := adoptScript.Run(ctx, dst, []string{dstKey, adoptedSet + channel}, ms).Err(); err != nil {
		return n, fmt.Errorf("list the copy in %s%s: %w", adoptedSet, channel, err)
	}
	return n, nil
}

// entry is one stream entry: its id and its fields and values, in order.
type entry struct {
	id     string
	fields []any
}

// parseEntries reads an XRANGE reply.
func parseEntries(rows []any) ([]entry, error) {
	out := make([]entry, 0, len(rows))
	for _, r := range rows {
		pair, ok := r.([]any)
		if !ok || len(pair) != 2 {
			return nil, fmt.Errorf("unexpected entry %T", r)
		}
		id, ok := pair[0].(string)
		if !ok {
			return nil, fmt.Errorf("unexpected entry id %T", pair[0])
		}
		kv, ok := pair[1].([]any)
		if !ok || len(kv)%2 != 0 || len(kv) == 0 {
			return nil, fmt.Errorf("entry %s: unexpected fields %T", id, pair[1])
		}
		out = append(out, entry{id: id, fields: kv})
	}
	return out, nil
}

// sourceOptions are the options of the hand-off's connection to the node's
// own Redis: as the agent's own user when it has one (it may SCAN, which
// the clients' user may not), else with the node's credentials; TLS as the
// health checks (the node's own certificate, pinned).
func (a *Agent) sourceOptions(s *runState) *redis.Options {
	user, pass := a.cfg.Username, a.cfg.Password
	if s.conf.agentPass != "" {
		user, pass = agentUser, s.conf.agentPass
	}
	var tc *tls.Config
	if s.probe.tls != nil {
		tc = s.probe.tls.Clone()
	}
	return &redis.Options{
		Addr: a.addr, Username: user, Password: pass, TLSConfig: tc,
		DisableIdentity: true, MaxRetries: -1, PoolSize: 2, ContextTimeoutEnabled: true,
	}
}

// peerOptions are the options of the hand-off's connection to another
// node: the node's own credentials (Username, Password: the nodes of a
// cluster share them, as the fanout clients assume) and PeerTLS, chosen as
// a fanout client chooses: with a TLS setup every node must speak TLS; without
// one, a node registered with tls is verified against the system's roots.
// Whatever answers is checked by respguard before go-redis reads it: the
// address comes from the registry.
func (a *Agent) peerOptions(n discovery.Node) (*redis.Options, error) {
	opt := &redis.Options{
		Addr: n.Addr, Username: a.cfg.Username, Password: a.cfg.Password,
		DialTimeout: 2 * time.Second, DisableIdentity: true, MaxRetries: -1, PoolSize: 2,
		ContextTimeoutEnabled: true,
		// A node that cannot be reached is skipped for the next one at
		// once: the hand-off has the drain timeout for all of its streams.
		DialerRetries: 1,
	}
	switch {
	case a.peerTLS != nil && !n.TLS:
		// Never the password in plain text to a node the registry says has
		// no TLS, when this cluster's nodes use it.
		return nil, fmt.Errorf("node %s (%s) is registered without tls, and this node uses TLS", n.ID, n.Addr)
	case a.peerTLS != nil:
		opt.TLSConfig = a.peerTLS.Clone()
	case n.TLS:
		opt.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	opt.Dialer = respguard.Dialer(redis.NewDialer(opt), nil)
	return opt, nil
}
