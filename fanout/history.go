package fanout

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// ErrNoHistory is returned by History, and by SubscribeWith with a Since,
// for a channel whose namespace keeps no history (history_size 0).
var ErrNoHistory = errors.New("fanout: the channel keeps no history (its namespace has history_size 0)")

// maxHistoryReads bounds the History calls reading at once; each holds at
// most one connection per node, fewer than go-redis's default pool (10 per
// CPU).
const maxHistoryReads = 8

// clockSkew is how far before a position's floor history is read: the
// stream ids are the nodes' clocks, the floor is the publishers'.
const clockSkew = time.Minute

// HistoryOptions tune History.
type HistoryOptions struct {
	// Since is a position (Message.Position, History.Position): only what
	// it does not cover is returned, and Recovered says whether that is
	// provably everything. Default: "", the whole history.
	Since string
	// Limit bounds the messages returned: the oldest Limit (the newest
	// with Reverse). Default: 0, all.
	Limit int
	// Reverse returns the newest first. Default: false, oldest first.
	Reverse bool
}

// History is a read of a channel's history.
type History struct {
	// Messages in per-publisher order (interleaved by publish time), each
	// with its Position.
	Messages []*Message
	// Recovered, with HistoryOptions.Since, is true when every message
	// published after Since and not covered by it is in Messages (or was
	// cut off by Limit): the publishers' chains are complete and no node
	// that held part of the gap was lost. False means something may be
	// missing; Messages is then what history still had. Without Since it
	// says whether the returned history has no hole.
	Recovered bool
	// Position covers Since and every message returned: subscribe from it
	// to continue (SubscribeWith).
	Position string
}

// histEntry is one stream entry.
type histEntry struct {
	env     envelope
	payload string
	pt      int64 // publish time of env.prev
	r       int   // replicas the publisher used
	node    string
}

// History reads channel's history from every live node (and what they
// adopted from drained nodes); see docs/history.md.
func (c *Client) History(ctx context.Context, channel string, opts HistoryOptions) (*History, error) {
	if c.isClosed() {
		return nil, ErrClosed
	}
	if err := ValidateChannel(channel); err != nil {
		return nil, err
	}
	if _, ok := c.historyOf(channel); !ok {
		return nil, ErrNoHistory
	}
	var since *position
	if opts.Since != "" {
		p, err := decodePosition(opts.Since)
		if err != nil {
			return nil, err
		}
		since = p
	}
	h, err := c.readHistory(ctx, channel, since, opts)
	if err != nil {
		return nil, err
	}
	if since != nil {
		if h.Recovered {
			c.m.recoveries.WithLabelValues("recovered").Inc()
		} else {
			c.m.recoveries.WithLabelValues("not_recovered").Inc()
		}
	}
	return h, nil
}

func (c *Client) readHistory(ctx context.Context, channel string, since *position, opts HistoryOptions) (*History, error) {
	start := "-"
	if since != nil {
		ms := time.Unix(0, since.floor).Add(-clockSkew).UnixMilli()
		if ms > 0 {
			start = strconv.FormatInt(ms, 10)
		}
	}
	o, _ := c.historyOf(channel)
	entries, complete, err := c.sharedStreams(ctx, channel, start, o)
	if err != nil {
		return nil, err
	}
	// Dedup replicas and copies made during a hand-off.
	type key struct{ pub, seq uint64 }
	all := make(map[key]*histEntry, len(entries))
	for i := range entries {
		e := &entries[i]
		all[key{e.env.pub, e.env.seq}] = e
	}
	p := since
	if p == nil {
		p = newPosition(0)
	}
	var kept []*histEntry
	for _, e := range all {
		if !p.covers(e.env.pub, e.env.seq, e.env.ts) {
			kept = append(kept, e)
		}
	}
	// Completeness: every kept message's predecessor is covered, kept, or
	// none (docs/history.md, step 4).
	recovered := complete
	keptSet := make(map[key]bool, len(kept))
	for _, e := range kept {
		keptSet[key{e.env.pub, e.env.seq}] = true
	}
	minSeq := map[uint64]uint64{}
	for _, e := range kept {
		if m, ok := minSeq[e.env.pub]; !ok || e.env.seq < m {
			minSeq[e.env.pub] = e.env.seq
		}
	}
	for _, e := range kept {
		if !linked(e, p, since != nil, keptSet[key{e.env.pub, e.env.prev}], all[key{e.env.pub, e.env.prev}], minSeq[e.env.pub]) {
			recovered = false
			break
		}
	}
	if since != nil && recovered {
		lost, err := c.lostRunsSince(ctx, since.at, kept)
		if err != nil || lost {
			recovered = false
		}
	}
	ordered := orderEntries(kept)
	if opts.Limit > 0 && len(ordered) > opts.Limit {
		if opts.Reverse {
			ordered = ordered[len(ordered)-opts.Limit:]
		} else {
			ordered = ordered[:opts.Limit]
		}
	}
	pos := p.clone()
	if since == nil && len(ordered) > 0 {
		pos.floor = ordered[0].env.ts - 1
		pos.at = pos.floor
	}
	out := make([]*Message, len(ordered))
	for i, e := range ordered {
		pos.add(e.env.pub, e.env.seq, e.env.prev, e.env.ts)
		out[i] = &Message{Channel: channel, Payload: []byte(e.payload), PublishedAt: time.Unix(0, e.env.ts), Node: e.node,
			pub: e.env.pub, seq: e.env.seq, prev: e.env.prev, pos: pos.encode()}
	}
	if opts.Reverse {
		for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
			out[i], out[j] = out[j], out[i]
		}
	}
	return &History{Messages: out, Recovered: recovered, Position: pos.encode()}, nil
}

// linked reports whether e's predecessor is accounted for: none, kept,
// or covered by the position (for a publisher the position does not name,
// by the floor, through the time of the predecessor the entry carries, or
// the predecessor's own entry). Without a since position (a plain read)
// only holes count: a predecessor older than the publisher's oldest kept
// message was trimmed before the window, not lost inside it.
func linked(e *histEntry, p *position, withSince, prevKept bool, prevEntry *histEntry, minSeq uint64) bool {
	prev := e.env.prev
	switch {
	case prev == 0 || prevKept:
		return true
	case !withSince:
		return prev < minSeq
	}
	if m, known := p.pubs[e.env.pub]; known {
		return prev <= m.seq
	}
	if e.pt != 0 && e.pt <= p.floor {
		return true
	}
	return prevEntry != nil && p.covers(prevEntry.env.pub, prevEntry.env.seq, prevEntry.env.ts)
}

// orderEntries sorts by publish time, then gives each publisher's slots
// its messages in seq order: per-publisher order holds even if a
// publisher's clock stepped back.
func orderEntries(es []*histEntry) []*histEntry {
	sort.Slice(es, func(i, j int) bool {
		a, b := es[i].env, es[j].env
		if a.ts != b.ts {
			return a.ts < b.ts
		}
		if a.pub != b.pub {
			return a.pub < b.pub
		}
		return a.seq < b.seq
	})
	byPub := map[uint64][]*histEntry{}
	for _, e := range es {
		byPub[e.env.pub] = append(byPub[e.env.pub], e)
	}
	for _, l := range byPub {
		sort.SliceStable(l, func(i, j int) bool { return l[i].env.seq < l[j].env.seq })
	}
	next := map[uint64]int{}
	out := make([]*histEntry, len(es))
	for i, e := range es {
		l := byPub[e.env.pub]
		out[i] = l[next[e.env.pub]]
		next[e.env.pub]++
	}
	return out
}

// readStreams reads channel's streams from every live node, from stream
// id start. complete is false when a node did not answer: what it holds
// is unknown.
func (c *Client) readStreams(ctx context.Context, channel, start string, o histOpts) (entries []histEntry, complete bool, err error) {
	// Reads queue here rather than in go-redis's pool: a reconnect storm
	// (a thousand resumes at once) must wait its turn, not fail on a pool
	// timeout and turn into recovered:false.
	select {
	case c.histReads <- struct{}{}:
		defer func() { <-c.histReads }()
	case <-ctx.Done():
		return nil, false, fmt.Errorf("fanout: history of %s: %w", channel, ctx.Err())
	}
	conns := c.conns()
	var mu sync.Mutex
	var wg sync.WaitGroup
	complete = true
	for _, nc := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got, rerr := nc.readHistory(ctx, channel, start, o)
			mu.Lock()
			defer mu.Unlock()
			if rerr != nil {
				complete = false
				if ctx.Err() == nil {
					c.log.Warn("fanout: history read failed on a node; the read is not complete", "node", nc, "channel", channel, "err", rerr)
				}
				return
			}
			entries = append(entries, got...)
		}()
	}
	wg.Wait()
	if ctx.Err() != nil {
		return nil, false, fmt.Errorf("fanout: history of %s: %w", channel, ctx.Err())
	}
	if len(conns) == 0 {
		complete = false
	}
	return entries, complete, nil
}

// readHistory reads the node's own stream of channel and those it
// adopted: of each, the newest o.size entries from stream id start that
// are younger than o.ttl (the bounds the streams keep only roughly).
func (nc *nodeConn) readHistory(ctx context.Context, channel, start string, o histOpts) ([]histEntry, error) {
	adopted, err := nc.rdb.SMembers(ctx, adoptedSetKey(channel)).Result()
	if err != nil && !errors.Is(err, redis.Nil) {
		return nil, err
	}
	oldest := time.Now().Add(-o.ttl).UnixNano()
	var out []histEntry
	for _, k := range append([]string{historyKey(channel)}, adopted...) {
		xs, err := nc.rdb.XRevRangeN(ctx, k, "+", start, int64(o.size)).Result()
		if err != nil && !errors.Is(err, redis.Nil) {
			return nil, err
		}
		for i := len(xs) - 1; i >= 0; i-- {
			x := xs[i]
			m, _ := x.Values["m"].(string)
			env, payload, ok := parseEnvelope(m)
			if !ok || env.ts < oldest {
				continue
			}
			pt, _ := strconv.ParseInt(fmt.Sprint(x.Values["pt"]), 10, 64)
			r, _ := strconv.Atoi(fmt.Sprint(x.Values["r"]))
			out = append(out, histEntry{env: env, payload: payload, pt: pt, r: r, node: nc.node.ID})
		}
	}
	return out, nil
}

// fillFromHistory delivers what the node published on the client's
// history channels since from, while this connection was broken: it runs
// on the receive goroutine as soon as the connection is back (go-redis has
// subscribed every channel again in one command), before any newer message
// is dispatched, so the missed messages come first and in order; those the
// client already had are dropped by the sequencer's dedup. Channels without
// history keep the gap (counted in pubmesh_fanout_reconnects_total).
func (nc *nodeConn) fillFromHistory(from time.Time) {
	c := nc.c
	chans, _ := c.subs.names()
	start := strconv.FormatInt(from.UnixMilli(), 10)
	for _, ch := range chans {
		o, ok := c.historyOf(ch)
		if !ok {
			continue
		}
		ctx, cancel := context.WithTimeout(nc.ctx, c.cfg.PublishTimeout)
		xs, err := nc.rdb.XRange(ctx, historyKey(ch), start, "+").Result()
		cancel()
		if err != nil {
			c.log.Warn("fanout: could not fill a subscription gap from history", "node", nc, "channel", ch, "err", err)
			continue
		}
		c.m.historyFills.Inc()
		oldest := time.Now().Add(-o.ttl).UnixNano()
		for _, x := range xs {
			raw, _ := x.Values["m"].(string)
			env, payload, ok := parseEnvelope(raw)
			if !ok || env.ts < oldest {
				continue
			}
			m := &Message{Channel: ch, Payload: []byte(payload), Node: nc.node.ID, pub: env.pub, seq: env.seq, prev: env.prev,
				PublishedAt: time.Unix(0, env.ts)}
			c.seqr.push(m, "", env, true)
		}
	}
}
