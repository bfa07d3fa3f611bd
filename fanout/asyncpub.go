package fanout

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"go.opentelemetry.io/otel/trace"
)

// PublishResult is the outcome of one PublishAsync: Done is closed when
// the publish finished, one way or the other; Err then says how.
type PublishResult struct {
	mu       sync.Mutex
	finished bool
	err      error
	done     chan struct{} // made by the first Done or Err before the end
}

// closedChan is the Done of every result that finished before anyone
// asked: most are never waited for, and cost no channel.
var closedChan = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

// Done is closed once the publish has been accepted by a node (by
// Replicas nodes, or as many as could take it) or has failed.
func (r *PublishResult) Done() <-chan struct{} {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.done == nil {
		if r.finished {
			return closedChan
		}
		r.done = make(chan struct{})
	}
	return r.done
}

// Err waits for the publish to finish and returns nil if a node accepted
// it, or why none did (the same errors Publish returns).
func (r *PublishResult) Err() error {
	<-r.Done()
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.err
}

func (r *PublishResult) finish(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.finished, r.err = true, err
	if r.done != nil {
		close(r.done)
	}
}

func failedResult(err error) *PublishResult {
	return &PublishResult{finished: true, err: err}
}

// PublishAsync queues payload for channel and returns without waiting for
// a node's answer. Everything queued for a node while its connection is
// busy goes out in one pipelined write, so one goroutine publishing in a
// loop gets the throughput of many calling Publish.
//
// Semantics are Publish's: the channel's home node is tried first, a
// failed attempt is retried on the next node in rendezvous order, and
// Replicas nodes are asked. Messages from one goroutine to one channel are
// delivered in the order PublishAsync was called: they are queued to a
// node in that order, and subscribers put those that a retry sent through
// another node back in order (held up to ReorderWindow). A publish that
// fails for good costs its successor on the channel that wait at
// subscribers, and is counted there as a gap.
//
// payload is copied before PublishAsync returns: the caller may reuse it.
//
// Outstanding publishes hold at most MaxPendingPublishBytes of payload:
// over it, PublishAsync blocks until earlier ones finish or ctx is done.
// ctx bounds only that wait and the queueing; once queued, a publish runs
// to its end, bounded by PublishTimeout per attempt. Every error reaches
// the result's Err, and Flush returns the first one (with how many
// failed). Close waits up to PublishTimeout for outstanding publishes and
// fails the rest with ErrClosed: call Flush first to wait longer.
func (c *Client) PublishAsync(ctx context.Context, channel string, payload []byte) *PublishResult {
	if c.isClosed() {
		return failedResult(ErrClosed)
	}
	if err := ValidateChannel(channel); err != nil {
		return failedResult(err)
	}
	size := int64(len(payload))
	if size > c.async.max {
		err := fmt.Errorf("fanout: a payload of %d bytes is over MaxPendingPublishBytes (%d)", size, c.async.max)
		c.m.publishErrors.Inc()
		return failedResult(err)
	}
	epoch, err := c.async.reserve(ctx, size)
	if err != nil {
		c.m.publishErrors.Inc()
		return failedResult(err)
	}
	start := time.Now()
	var span trace.Span // nil: not traced
	if c.tracer != nil {
		// The span outlives the call: it ends with the publish
		// (finishLocked), and ctx's cancel does not end it.
		_, span = c.startPublish(ctx, channel, true)
	}
	seq, prev := c.prevs.nextSent(channel, func() uint64 { return c.seq.Add(1) }, start.UnixNano())
	env := envelope{pub: c.pubID, seq: seq, prev: prev.seq, ts: start.UnixNano()}
	if span != nil {
		env.trace = traceparentOf(span)
	}
	data := appendEnvelope(make([]byte, 0, len(payload)+64+len(env.trace)), env, payload)
	ar := &asyncReq{
		c: c, channel: channel, data: data, size: size, epoch: epoch, seq: seq, prev: prev, start: start, span: span,
	}
	if o, ok := c.historyOf(channel); ok {
		ar.hist = newHistArgs(data, prev.ts, c.cfg.Replicas, o)
	}
	rs, err := c.waitReady(ctx)
	if err != nil {
		ar.finish(err)
		return &ar.res
	}
	ar.route(rs)
	if c.async.gate(ar) {
		ar.mu.Lock()
		ar.send(ctx)
		ar.mu.Unlock()
	}
	return &ar.res
}

// route ranks the nodes of rs for the publish.
func (ar *asyncReq) route(rs *readySet) {
	ar.mu.Lock()
	defer ar.mu.Unlock()
	ar.rs = rs
	ar.order = rank(ar.orderBuf[:0], channelHash(ar.channel), rs.seeds, func(i int) bool { return rs.conns[i].suspect() })
	ar.next = 0
	ar.need = min(ar.c.cfg.Replicas, len(ar.order))
}

// home is the node the publish goes to first.
func (ar *asyncReq) home() *nodeConn {
	ar.mu.Lock()
	defer ar.mu.Unlock()
	if len(ar.order) == 0 {
		return nil
	}
	return ar.rs.conns[ar.order[0]]
}

// Flush waits until every publish PublishAsync queued before it has
// finished, and returns the first error among the async publishes that
// failed since the previous Flush, with their count; nil if none failed.
func (c *Client) Flush(ctx context.Context) error {
	if err := c.async.wait(ctx, c.async.cut(), nil); err != nil {
		return err
	}
	return c.async.takeErrors()
}

// asyncReq is one PublishAsync in flight. Its attempts answer from the
// node publisher goroutines, which must never block: a failed attempt is
// handed to the client's retry goroutine.
type asyncReq struct {
	res     PublishResult // returned to the caller: one allocation for both
	c       *Client
	channel string
	data    []byte
	hist    *histArgs
	size    int64
	epoch   uint64 // the Flush generation it belongs to
	seq     uint64
	prev    prevLink // the channel's predecessor named in the envelope
	start   time.Time
	span    trace.Span // the publish span; nil when not traced

	mu       sync.Mutex // guards what follows
	rs       *readySet
	order    []int
	next     int
	need     int
	pending  int
	accepted int
	retrying int // failed attempts the retry goroutine has not handled yet
	sending  int // sends queueing attempts (the lock is let go around each enqueue): not finished yet
	lastErr  error
	finished bool

	orderBuf [4]int // order's room for up to 4 nodes without an allocation
	first    pubReq // the first attempt's request, the only one most need
}

// send queues attempts until need are pending or accepted, or no node is
// left to try; it finishes the publish when nothing is pending. ar.mu is
// held.
func (ar *asyncReq) send(ctx context.Context) {
	c := ar.c
	ar.sending++
	for ar.pending+ar.accepted < ar.need && ar.next < len(ar.order) {
		nc := ar.rs.conns[ar.order[ar.next]]
		ar.next++
		r := &pubReq{}
		if ar.next == 1 {
			r = &ar.first
		}
		*r = pubReq{channel: ar.channel, data: ar.data, hist: ar.hist, node: nc, async: ar}
		ar.pending++ // before enqueue: the answer may come before it returns
		c.async.attempting(ar.channel, nc)
		ar.mu.Unlock()
		err := nc.enqueue(ctx, r)
		ar.mu.Lock()
		if err != nil {
			c.async.attempted(ar.channel, nc, false)
			ar.pending--
			ar.lastErr = err
			if ctx.Err() != nil {
				break
			}
			c.m.retries.Inc()
		}
	}
	ar.sending--
	ar.maybeFinish(ctx)
}

// maybeFinish ends the publish once no attempt is pending. ar.mu is held.
func (ar *asyncReq) maybeFinish(ctx context.Context) {
	if ar.pending > 0 || ar.retrying > 0 || ar.sending > 0 || ar.finished {
		return
	}
	switch {
	case ar.accepted > 0:
		ar.finishLocked(nil)
	case ctx.Err() != nil:
		ar.finishLocked(fmt.Errorf("fanout: publish to %s: %w", ar.channel, ctx.Err()))
	case ar.lastErr == nil:
		ar.finishLocked(ErrNoNodes)
	default:
		ar.finishLocked(fmt.Errorf("%w: %w", ErrNoNodes, ar.lastErr))
	}
}

func (ar *asyncReq) finish(err error) {
	ar.mu.Lock()
	defer ar.mu.Unlock()
	ar.finishLocked(err)
}

func (ar *asyncReq) finishLocked(err error) {
	if ar.finished {
		return
	}
	ar.finished = true
	c := ar.c
	if err == nil {
		c.prevs.accepted(ar.channel, ar.seq, ar.start.UnixNano())
		c.m.publishes.Inc()
		c.m.publishLatency.Observe(time.Since(ar.start).Seconds())
	} else {
		c.prevs.unsent(ar.channel, ar.seq, ar.prev)
		c.m.publishErrors.Inc()
	}
	if ar.span != nil {
		endPublish(ar.span, err)
	}
	ar.res.finish(err)
	c.async.release(ar.size, ar.epoch, err)
}

// answer takes a node's answer to one attempt, on that node's publisher
// goroutine: it must not block.
func (ar *asyncReq) answer(r pubResult) {
	ar.c.async.attempted(ar.channel, r.node, r.err != nil)
	ar.mu.Lock()
	ar.pending--
	if r.err == nil {
		ar.accepted++
		if ar.span != nil {
			publishAccepted(ar.span, r.node)
		}
		ar.maybeFinish(ar.c.ctx)
		ar.mu.Unlock()
		return
	}
	ar.lastErr = r.err
	ar.retrying++
	ar.mu.Unlock()
	ar.c.async.retry(ar, r)
}

// asyncPublisher is the client's accounting of async publishes: the bytes
// and count outstanding, the errors for Flush, and the goroutine that
// retries failed attempts (queueing to another node may block, which a
// node's publisher goroutine must not).
type asyncPublisher struct {
	c   *Client
	max int64

	mu       sync.Mutex
	bytes    int64
	epoch    uint64           // the current Flush generation: Flush starts a new one
	counts   map[uint64]int64 // outstanding publishes per generation, zeros removed
	changed  chan struct{}    // closed and replaced when one finishes while waiting is set
	waiting  bool             // someone waits on changed (reserve, Flush, Close)
	firstErr error
	failed   int
	retries  []asyncRetry
	wake     chan struct{}            // 1-buffered: retries were added
	chans    map[string]*asyncChannel // channels with publishes outstanding (asyncorder.go)
	closed   bool                     // the retry goroutine has ended: failures finish at once
}

// asyncRetry is a job for the retry goroutine: a failed attempt of ar,
// or (ar nil) the channel whose waiting publishes may go now.
type asyncRetry struct {
	ar      *asyncReq
	r       pubResult
	channel string
}

func newAsyncPublisher(c *Client, max int64) *asyncPublisher {
	return &asyncPublisher{c: c, max: max, counts: map[uint64]int64{}, chans: map[string]*asyncChannel{},
		changed: make(chan struct{}), wake: make(chan struct{}, 1)}
}

// reserve waits until size more bytes fit under max, and returns the
// generation the publish belongs to.
func (a *asyncPublisher) reserve(ctx context.Context, size int64) (uint64, error) {
	for {
		a.mu.Lock()
		if a.bytes+size <= a.max || a.bytes == 0 {
			a.bytes += size
			a.counts[a.epoch]++
			e := a.epoch
			a.c.m.asyncPendingBytes.Set(float64(a.bytes))
			a.mu.Unlock()
			return e, nil
		}
		ch := a.changed
		a.waiting = true
		a.mu.Unlock()
		a.c.m.asyncBlocked.Inc()
		select {
		case <-ch:
		case <-ctx.Done():
			return 0, fmt.Errorf("fanout: waiting for room under MaxPendingPublishBytes: %w", ctx.Err())
		case <-a.c.ctx.Done():
			return 0, ErrClosed
		}
	}
}

func (a *asyncPublisher) release(size int64, epoch uint64, err error) {
	a.mu.Lock()
	a.bytes -= size
	if a.counts[epoch]--; a.counts[epoch] == 0 {
		delete(a.counts, epoch)
	}
	a.c.m.asyncPendingBytes.Set(float64(a.bytes))
	if err != nil {
		if a.firstErr == nil {
			a.firstErr = err
		}
		a.failed++
	}
	if a.waiting {
		close(a.changed)
		a.changed, a.waiting = make(chan struct{}), false
	}
	a.mu.Unlock()
}

// cut starts a new generation and returns the last one, so a Flush waits
// for what was queued before it, not for what others queue meanwhile.
func (a *asyncPublisher) cut() uint64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.epoch++
	return a.epoch - 1
}

// wait returns once no publish of generation upTo or older is
// outstanding, or when stop or ctx is done.
func (a *asyncPublisher) wait(ctx context.Context, upTo uint64, stop <-chan time.Time) error {
	for {
		a.mu.Lock()
		done := true
		for e := range a.counts {
			if e <= upTo {
				done = false
				break
			}
		}
		if done {
			a.mu.Unlock()
			return nil
		}
		ch := a.changed
		a.waiting = true
		a.mu.Unlock()
		select {
		case <-ch:
		case <-stop:
			return context.DeadlineExceeded
		case <-ctx.Done():
			return fmt.Errorf("fanout: flush: %w", ctx.Err())
		}
	}
}

func (a *asyncPublisher) takeErrors() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	err, n := a.firstErr, a.failed
	a.firstErr, a.failed = nil, 0
	switch {
	case n == 0:
		return nil
	case n == 1:
		return err
	default:
		return fmt.Errorf("fanout: %d async publishes failed; the first: %w", n, err)
	}
}

func (a *asyncPublisher) retry(ar *asyncReq, r pubResult) {
	a.mu.Lock()
	if a.closed { // the retry goroutine is gone: the client is closing
		a.mu.Unlock()
		ar.mu.Lock()
		ar.retrying--
		ar.finishLocked(fmt.Errorf("%w (publish failed: %w)", ErrClosed, r.err))
		ar.mu.Unlock()
		a.resent(ar.channel)
		return
	}
	a.retries = append(a.retries, asyncRetry{ar: ar, r: r})
	a.mu.Unlock()
	a.kick()
}

func (a *asyncPublisher) kick() {
	select {
	case a.wake <- struct{}{}:
	default:
	}
}

// run handles failed attempts in the order they failed, so the messages
// of a channel that failed on one node are queued to the next in their
// order. When the client closes, what is left fails with ErrClosed.
func (a *asyncPublisher) run() {
	defer a.c.wg.Done()
	for {
		select {
		case <-a.wake:
		case <-a.c.ctx.Done():
			a.mu.Lock()
			a.closed = true
			left := a.retries
			a.retries = nil
			var waiting []*asyncReq
			for _, st := range a.chans {
				waiting = append(waiting, st.waiting...)
				st.waiting = nil
			}
			a.mu.Unlock()
			for _, x := range left {
				if x.ar != nil {
					x.ar.finish(ErrClosed)
				}
			}
			for _, ar := range waiting {
				ar.finish(ErrClosed)
			}
			return
		}
		a.mu.Lock()
		batch := a.retries
		a.retries = nil
		a.mu.Unlock()
		for _, x := range batch {
			if x.ar == nil {
				a.dispatch(x.channel)
				continue
			}
			a.handle(x.ar, x.r)
		}
	}
}

func (a *asyncPublisher) handle(ar *asyncReq, r pubResult) {
	c := a.c
	if !errors.Is(r.err, errNodeGone) {
		r.node.markSuspect()
		r.node.pubFailed(r.err)
		var refused *NodeError
		if !errors.As(r.err, &refused) {
			c.log.Warn("fanout: async publish failed, trying next node", "node", r.node, "err", r.err)
		}
	}
	c.m.retries.Inc()
	ar.mu.Lock()
	ar.retrying--
	ar.send(c.ctx) // the next attempt is counted before the failed one is let go
	ar.mu.Unlock()
	a.resent(ar.channel)
}

// closeAsync gives outstanding async publishes up to d to finish.
func (a *asyncPublisher) closeAsync(d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	_ = a.wait(context.Background(), a.cut(), t.C)
}
