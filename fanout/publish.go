package fanout

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"go.opentelemetry.io/otel/trace"
)

// prevTable remembers, per channel, the seq of this client's last message
// there that a node accepted, so each envelope can name its predecessor.
// A publish that failed is never a predecessor: subscribers would hold the
// next message ReorderWindow for it and count a gap. It forgets the oldest
// channels beyond its size; a forgotten channel's next message names no
// predecessor and is never held back.
type prevTable struct {
	mu   sync.Mutex
	last map[string]prevLink
	fifo []string
	max  int
}

// prevLink is a channel's last accepted message: its seq, and its publish
// time, which history keeps with the next message (docs/history.md).
type prevLink struct {
	seq uint64
	ts  int64
}

func newPrevTable(n int) *prevTable { return &prevTable{last: map[string]prevLink{}, max: n} }

// next allocates seq and returns the channel's previous accepted message.
func (p *prevTable) next(channel string, alloc func() uint64) (seq uint64, prev prevLink) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return alloc(), p.last[channel]
}

// nextSent allocates seq for a publish that does not wait for its
// predecessor's answer (PublishAsync): the predecessor is the channel's
// last message sent, answered or not, and seq becomes it at once, so
// subscribers can restore the order of pipelined messages that a retry
// sent through different nodes.
func (p *prevTable) nextSent(channel string, alloc func() uint64, ts int64) (seq uint64, prev prevLink) {
	p.mu.Lock()
	defer p.mu.Unlock()
	seq, prev = alloc(), p.last[channel]
	p.record(channel, prevLink{seq, ts})
	return seq, prev
}

// unsent takes back a failed publish sent by nextSent: if it is still the
// channel's last message, its predecessor is again, so the next message
// does not name one that never arrives.
func (p *prevTable) unsent(channel string, seq uint64, prev prevLink) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if last, ok := p.last[channel]; ok && last.seq == seq {
		p.last[channel] = prev
	}
}

// accepted records that a node took seq, published at ts, on channel.
// Concurrent publishes may finish out of order; the link keeps the highest
// seq.
func (p *prevTable) accepted(channel string, seq uint64, ts int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if prev, ok := p.last[channel]; !ok || seq > prev.seq {
		p.record(channel, prevLink{seq, ts})
	}
}

// record sets the channel's link, forgetting the oldest channel beyond
// max. p.mu is held.
func (p *prevTable) record(channel string, l prevLink) {
	if _, ok := p.last[channel]; !ok {
		p.fifo = append(p.fifo, channel)
		if len(p.fifo) > p.max {
			delete(p.last, p.fifo[0])
			p.fifo = p.fifo[1:]
		}
	}
	p.last[channel] = l
}

// pubCall is the per-Publish state, pooled: the result channel, the
// requests for up to maxPooledNodes nodes, the attempts waiting for an
// answer, and the timer that bounds them. It goes back to the pool only
// when every request it queued has answered, so no node still holds it.
type pubCall struct {
	order    []int
	results  chan pubResult
	reqs     [maxPooledNodes]pubReq
	attempts []attempt
	timer    *time.Timer // stopped while the call is in the pool
}

// attempt is one request waiting for its node's answer.
type attempt struct {
	node      *nodeConn
	due       time.Time // PublishTimeout after it was queued
	abandoned bool      // given up at due; its late answer is ignored
}

const maxPooledNodes = 8

var callPool = sync.Pool{New: func() any { return newPubCall(maxPooledNodes) }}

func newPubCall(nodes int) *pubCall {
	t := time.NewTimer(time.Hour)
	t.Stop()
	return &pubCall{order: make([]int, 0, 16), results: make(chan pubResult, nodes), attempts: make([]attempt, 0, nodes), timer: t}
}

// next returns the pending attempt due first, or nil.
func (call *pubCall) next() *attempt {
	var first *attempt
	for i := range call.attempts {
		a := &call.attempts[i]
		if !a.abandoned && a.node != nil && (first == nil || a.due.Before(first.due)) {
			first = a
		}
	}
	return first
}

// answered marks the attempt on nc as answered; it reports false for the
// late answer of an abandoned attempt.
func (call *pubCall) answered(nc *nodeConn) bool {
	for i := range call.attempts {
		if a := &call.attempts[i]; a.node == nc {
			if a.abandoned {
				return false
			}
			a.node = nil
			return true
		}
	}
	return true
}

// Publish sends payload to channel and returns once Replicas nodes (at
// least one) accepted it. It tries the channel's home node first and, on a
// failure, marks that node suspect and tries the next one in rendezvous
// order. When no node is ready it waits up to Config.WaitReady for one.
//
// Concurrent calls to the same node are sent together as one pipeline, so
// many goroutines calling Publish get pipelined throughput. Messages from
// one goroutine to one channel are delivered in the order Publish returned.
func (c *Client) Publish(ctx context.Context, channel string, payload []byte) error {
	if c.isClosed() {
		return ErrClosed
	}
	if err := ValidateChannel(channel); err != nil {
		return err
	}
	start := time.Now()
	var span trace.Span // nil: not traced
	if c.tracer != nil {
		ctx, span = c.startPublish(ctx, channel, false)
	}
	err := c.publish(ctx, channel, payload, start, span)
	if span != nil {
		endPublish(span, err)
	}
	if err != nil {
		c.m.publishErrors.Inc()
		return err
	}
	c.m.publishes.Inc()
	c.m.publishLatency.Observe(time.Since(start).Seconds())
	return nil
}

func (c *Client) publish(ctx context.Context, channel string, payload []byte, start time.Time, span trace.Span) error {
	seq, prev := c.prevs.next(channel, func() uint64 { return c.seq.Add(1) })
	env := envelope{pub: c.pubID, seq: seq, prev: prev.seq, ts: start.UnixNano()}
	if span != nil {
		env.trace = traceparentOf(span)
	}
	data := appendEnvelope(make([]byte, 0, len(payload)+64+len(env.trace)), env, payload)
	var hist *histArgs
	if o, ok := c.historyOf(channel); ok {
		hist = newHistArgs(data, prev.ts, c.cfg.Replicas, o)
	}

	rs, err := c.waitReady(ctx)
	if err != nil {
		return err
	}
	var call *pubCall
	pooled := len(rs.conns) <= maxPooledNodes
	if pooled {
		call = callPool.Get().(*pubCall)
	} else {
		call = newPubCall(len(rs.conns))
	}
	order := rank(call.order, channelHash(channel), rs.seeds, func(i int) bool { return rs.conns[i].suspect() })
	call.order = order
	results := call.results

	need := min(c.cfg.Replicas, len(order))
	next, pending, accepted, abandoned := 0, 0, 0, 0
	defer func() {
		call.timer.Stop()
		if pooled && pending == 0 && abandoned == 0 { // nothing queued still refers to call
			clear(call.reqs[:])
			clear(call.attempts)
			call.attempts = call.attempts[:0]
			callPool.Put(call)
		}
	}()
	var lastErr error
	send := func() {
		for pending+accepted < need && next < len(order) {
			nc := rs.conns[order[next]]
			var r *pubReq
			if pooled {
				r = &call.reqs[next]
			} else {
				r = &pubReq{}
			}
			next++
			*r = pubReq{channel: channel, data: data, hist: hist, node: nc, done: results}
			due := time.Now().Add(c.cfg.PublishTimeout)
			if err := nc.enqueue(ctx, r); err != nil {
				lastErr = err
				if ctx.Err() != nil {
					return
				}
				c.m.retries.Inc()
				continue
			}
			call.attempts = append(call.attempts, attempt{node: nc, due: due})
			pending++
		}
	}
	send()
	for pending > 0 {
		// While another node can be tried, PublishTimeout bounds each
		// attempt from its enqueue, whatever holds it up: the queue behind
		// a stalled pipeline, a new connection's handshake (bounded by
		// go-redis only by DialTimeout), the read. An attempt out of time
		// is given up: the node is marked suspect and the next one tried;
		// if the first still delivers the message later, subscribers drop
		// the copy. The last candidate is waited for (go-redis's own
		// timeouts end it), so a slow cluster delays a publish rather than
		// fail it.
		var first *attempt
		var timeout <-chan time.Time
		if next < len(order) {
			first = call.next()
			call.timer.Reset(time.Until(first.due))
			timeout = call.timer.C
		}
		var r pubResult
		select {
		case r = <-results:
			if !call.answered(r.node) {
				continue // the late answer of an abandoned attempt
			}
		case <-timeout:
			first.abandoned = true
			abandoned++
			r = pubResult{node: first.node, err: fmt.Errorf("fanout: publish to %s: no answer within %s", first.node, c.cfg.PublishTimeout)}
		case <-ctx.Done():
			return fmt.Errorf("fanout: publish to %s: %w", channel, ctx.Err())
		}
		pending--
		if r.err == nil {
			accepted++
			if span != nil {
				publishAccepted(span, r.node)
			}
			continue
		}
		lastErr = r.err
		if !errors.Is(r.err, errNodeGone) {
			r.node.markSuspect()
			r.node.pubFailed(r.err)
			var refused *NodeError
			if !errors.As(r.err, &refused) { // a refusal is logged once, by the node's conn
				c.log.Warn("fanout: publish failed, trying next node", "node", r.node, "err", r.err)
			}
		}
		c.m.retries.Inc()
		send()
	}
	if accepted > 0 {
		c.prevs.accepted(channel, seq, start.UnixNano())
		return nil
	}
	if ctx.Err() != nil {
		return fmt.Errorf("fanout: publish to %s: %w", channel, ctx.Err())
	}
	if lastErr == nil {
		return ErrNoNodes
	}
	return fmt.Errorf("%w: %w", ErrNoNodes, lastErr)
}

// waitReady returns the ready set, waiting up to WaitReady for one node.
func (c *Client) waitReady(ctx context.Context) (*readySet, error) {
	rs := c.ready.Load()
	if len(rs.conns) > 0 {
		return rs, nil
	}
	t := time.NewTimer(c.cfg.WaitReady)
	defer t.Stop()
	for {
		c.connMu.Lock()
		changed := c.readyC
		c.connMu.Unlock()
		if rs = c.ready.Load(); len(rs.conns) > 0 {
			return rs, nil
		}
		select {
		case <-changed:
		case <-t.C:
			return nil, ErrNoNodes
		case <-ctx.Done():
			return nil, fmt.Errorf("fanout: waiting for a ready node: %w", ctx.Err())
		case <-c.ctx.Done():
			return nil, ErrClosed
		}
	}
}
