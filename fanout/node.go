package fanout

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/pubmesh/pubmesh/discovery"
	"github.com/pubmesh/pubmesh/internal/respguard"
)

var errNodeGone = errors.New("fanout: node left")

// pubReq is one publish waiting for one node.
type pubReq struct {
	channel string
	data    []byte
	hist    *histArgs // nil: a plain PUBLISH
	node    *nodeConn
	done    chan<- pubResult // buffered by the caller; nil for an async publish
	async   *asyncReq        // the PublishAsync this attempt is for, answered in place
}

// answer hands r its node's answer without blocking.
func (r *pubReq) answer(res pubResult) {
	if r.async != nil {
		r.async.answer(res)
		return
	}
	r.done <- res
}

type pubResult struct {
	node *nodeConn
	err  error
}

// nodeConn is the client's link to one run of one node: PublishConns
// pipelined publishers fed by a bounded queue, and one subscription
// connection that carries every channel and pattern of the client.
type nodeConn struct {
	c    *Client
	node discovery.Node // id, addr, run id and incarnation are fixed for the conn's life
	seed uint64
	rdb  *redis.Client

	state atomic.Value // discovery.State, updated from snapshots

	// pubMu guards pubClosed and the inflight count against the drain path:
	// once pubClosed is set no new request is queued.
	pubMu     sync.Mutex
	pubClosed bool
	inflight  sync.WaitGroup
	queue     chan *pubReq
	// dial makes a connection to the node (TLS included) for the
	// subscription connection; cur is that connection while it is up,
	// handed to the receive goroutine through handoff.
	dial    func(ctx context.Context, network, addr string) (net.Conn, error)
	curMu   sync.Mutex
	cur     *subConn
	handoff chan *subConn
	// lanes are one queue per publisher goroutine, for PublishAsync: a
	// channel's async publishes all go through one lane, so one pipeline
	// at a time carries them and they reach Redis in order (the shared
	// queue feeds PublishConns pipelines at once).
	lanes []chan *pubReq

	suspectUntil  atomic.Int64 // unix nanos
	retired       atomic.Bool  // the node left etcd; its connection ending is expected
	downReported  atomic.Bool  // this client reported the node down (downreport.go)
	histErrLogged atomic.Bool  // a refused history append was logged for this connection
	expiresMu     sync.Mutex
	expires       map[string]time.Time // history stream -> when its TTL was last set; under expiresMu

	// subQ holds the subscribe commands for subLoop, in order, at most
	// maxQueuedSubs; unsubC and unsubP the names to unsubscribe, merged
	// (the registry decides at run time, so their order against subscribes
	// does not matter); subWake (capacity 1) wakes subLoop. resubAll asks
	// it to subscribe the client's whole set again, after a full queue.
	subQMu   sync.Mutex
	subQ     []subCmd
	unsubC   map[string]struct{}
	unsubP   map[string]struct{}
	subWake  chan struct{}
	resubAll atomic.Bool
	// recheck asks subLoop to confirm the connection with a fence: after
	// it broke (go-redis makes it again and resubscribes), after a failure.
	recheck atomic.Bool
	// subUp is true while the subscription connection is confirmed: the
	// last fence came back and the connection has not broken since.
	subUp atomic.Bool
	// lastErr is the latest failure of the subscription connection or of
	// a publish, for Health; nil until one.
	lastErr atomic.Pointer[errBox]
	// pubOK is false after a publish to the node failed, until one works;
	// Health ignores it once the node is no longer suspect.
	pubOK atomic.Bool

	fenceMu    sync.Mutex // guards fences, fenceSeq
	fences     map[string]chan struct{}
	fenceSeq   uint64
	subscribed chan struct{} // closed once the first subscription set is confirmed

	acked atomic.Value // string: the AckState last acked, to ack once

	// refused is closed, once, when the node first refuses the client's
	// credentials or TLS (see refusal); refusedErr holds the latest refusal.
	refused     chan struct{}
	refusedOnce sync.Once
	// failed is closed, once, when a first subscription attempt fails for
	// another reason (the node does not answer: down, or cut off), so that
	// Subscribe stops waiting for it; the conn keeps trying.
	failed     chan struct{}
	failedOnce sync.Once
	refusedErr atomic.Pointer[NodeError]

	badOnce sync.Once // logs the first reply that is not Redis

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup // publishers and receiver
}

func newNodeConn(c *Client, n discovery.Node) *nodeConn {
	opt := &redis.Options{
		Addr:            n.Addr,
		Username:        c.cfg.Username,
		Password:        c.cfg.Password,
		DialTimeout:     c.cfg.DialTimeout,
		ReadTimeout:     c.cfg.PublishTimeout,
		WriteTimeout:    c.cfg.PublishTimeout,
		PoolSize:        c.cfg.PublishConns + 2,
		MaxRetries:      -1, // the client retries on another node instead
		DisableIdentity: true,
	}
	if isRunID(n.RunID) {
		// A crashed Redis restarted by its agent answers at the same
		// address with nothing subscribed: publishing there would lose
		// the message, so connections check they reach the registered run.
		opt.OnConnect = checkRunID(n.RunID)
	}
	switch {
	case c.cfg.TLS != nil && !n.TLS:
		// A client with TLS settings never speaks plain text: a registry
		// entry without tls must not downgrade it (and get the password in
		// clear). Every dial fails at once with a refusal.
		opt.Dialer = func(context.Context, string, string) (net.Conn, error) { return nil, errPlainNode }
	case c.cfg.TLS != nil:
		opt.TLSConfig = c.cfg.TLS.Clone()
	case n.TLS:
		// Never plain text to a node that wants TLS: verify it against the
		// system's roots (a private CA is refused with a clear error).
		opt.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	ctx, cancel := context.WithCancel(context.Background())
	nc := &nodeConn{
		c: c, node: n, seed: nodeSeed(n.ID),
		queue: make(chan *pubReq, c.cfg.PublishQueue), lanes: make([]chan *pubReq, c.cfg.PublishConns), fences: map[string]chan struct{}{},
		handoff: make(chan *subConn, 1), subscribed: make(chan struct{}), subWake: make(chan struct{}, 1), refused: make(chan struct{}), failed: make(chan struct{}), ctx: ctx, cancel: cancel,
	}
	for i := range nc.lanes {
		nc.lanes[i] = make(chan *pubReq, c.cfg.PublishQueue)
	}
	// Whatever answers at the node's address is checked before go-redis
	// reads it: a server that is not Redis must not make go-redis allocate
	// the sizes it announces (see internal/respguard). The subscription
	// connection's own reader enforces the same limits.
	dial := opt.Dialer
	if dial == nil {
		dial = redis.NewDialer(opt)
	}
	nc.dial = dial
	opt.Dialer = respguard.Dialer(dial, nc.badReply)
	nc.rdb = redis.NewClient(opt)
	nc.state.Store(n.State)
	nc.acked.Store("")
	nc.pubOK.Store(true)
	return nc
}

// badReply counts and logs (once per conn) a reply that is not Redis; the
// connection that carried it fails and is made again after a backoff.
func (nc *nodeConn) badReply(e *respguard.Error) {
	nc.c.m.badReplies.Inc()
	nc.badOnce.Do(func() {
		nc.c.log.Error("fanout: node answered something that is not a Redis reply; its connections fail until it is fixed",
			"node", nc.node.ID, "addr", nc.node.Addr, "reason", e.Reason)
	})
}

func (nc *nodeConn) String() string { return nc.node.ID + "@" + nc.node.Addr }

func (nc *nodeConn) getState() discovery.State { return nc.state.Load().(discovery.State) }

func (nc *nodeConn) suspect() bool { return time.Now().UnixNano() < nc.suspectUntil.Load() }

// pubFailed records, for Health, that a publish to the node failed.
func (nc *nodeConn) pubFailed(err error) {
	nc.pubOK.Store(false)
	nc.lastErr.Store(&errBox{err})
}

func (nc *nodeConn) markSuspect() {
	nc.suspectUntil.Store(time.Now().Add(nc.c.cfg.SuspectFor).UnixNano())
}

// launch starts the publishers, the receiver and the subscription loop
// (which subscribes the client's current channels and patterns first).
// Every goroutine is counted in wg before launch returns, so close, which
// waits for wg, never runs before one of them has started.
func (nc *nodeConn) launch() {
	nc.wg.Add(nc.c.cfg.PublishConns + 2)
	for i := range nc.c.cfg.PublishConns {
		go nc.publisher(nc.lanes[i])
	}
	go nc.receive()
	go nc.subLoop()
}

// receive is the only reader of the subscription connection: it reads
// each connection the subscription loop hands it until it breaks, then
// waits for the next (the loop dials again and subscribes the whole set).
func (nc *nodeConn) receive() {
	defer nc.wg.Done()
	var lastRecv time.Time // when a connection last delivered something
	broke := false         // the connection before this one broke
	for {
		var sc *subConn
		select {
		case sc = <-nc.handoff:
		case <-nc.ctx.Done():
			return
		}
		err := nc.read(sc, &lastRecv, broke)
		refused := isRefusal(err)
		if refused {
			nc.refusal(err) // before the close fails the fence: Subscribe reports the refusal
		}
		sc.close()
		nc.dropCurrent(sc)
		if nc.ctx.Err() != nil {
			return
		}
		broke = true
		nc.subUp.Store(false)
		nc.lastErr.Store(&errBox{err})
		nc.recheck.Store(true)
		nc.wakeSub()
		if nc.retired.Load() {
			nc.c.log.Debug("fanout: connection to a node that left is closed", "node", nc, "err", err)
		} else {
			nc.c.m.reconnects.Inc()
			if !refused {
				nc.c.log.Warn("fanout: subscription connection broke", "node", nc, "err", err)
			}
		}
	}
}

// read dispatches what sc delivers until it fails. After a break, the
// first confirmation of the new connection (its channels are subscribed
// again) is when the history of the gap is read, before anything newer
// is dispatched.
func (nc *nodeConn) read(sc *subConn, lastRecv *time.Time, broke bool) error {
	rd := sc.rd
	fill := broke && !lastRecv.IsZero()
	for {
		if err := rd.next(); err != nil {
			var bad *respguard.Error
			if errors.As(err, &bad) {
				nc.badReply(bad)
			}
			return err
		}
		switch rd.kind {
		case '*':
			if len(rd.elems) == 0 {
				return fmt.Errorf("%w: an empty array", errUnexpectedReply)
			}
			switch k := rd.elems[0]; {
			case bytes.Equal(k, kindMessage) && len(rd.elems) == 3:
				nc.c.dispatch(nc, rd.elems[1], nil, rd.elems[2])
			case bytes.Equal(k, kindPMessage) && len(rd.elems) == 4:
				nc.c.dispatch(nc, rd.elems[2], rd.elems[1], rd.elems[3])
			case bytes.Equal(k, kindPong) && len(rd.elems) == 2:
				nc.fenceDone(rd.elems[1])
			case fill && (bytes.Equal(k, kindSub) || bytes.Equal(k, kindPSub)):
				fill = false
				nc.fillFromHistory(lastRecv.Add(-time.Second))
			}
		case '$': // PING's answer before anything is subscribed
			nc.fenceDone(rd.str)
		case '-':
			// A command refused (NOPERM on SUBSCRIBE): the connection
			// stays; the subscriptions are not all there.
			err := errReply(rd.str)
			nc.subUp.Store(false)
			nc.lastErr.Store(&errBox{err})
			nc.recheck.Store(true)
			if isRefusal(err) {
				nc.refusal(err) // logged once, as an error
			} else {
				nc.c.log.Warn("fanout: node refused a subscription command", "node", nc, "err", err)
			}
		}
		*lastRecv = time.Now()
	}
}

// fenceDone ends the fence whose PING carried token.
func (nc *nodeConn) fenceDone(token []byte) {
	nc.fenceMu.Lock()
	if ch, ok := nc.fences[string(token)]; ok {
		close(ch)
		delete(nc.fences, string(token))
	}
	nc.fenceMu.Unlock()
}

// current is the subscription connection while it is up.
func (nc *nodeConn) current() *subConn {
	nc.curMu.Lock()
	defer nc.curMu.Unlock()
	return nc.cur
}

// dropCurrent forgets sc if it is the current connection.
func (nc *nodeConn) dropCurrent(sc *subConn) {
	nc.curMu.Lock()
	defer nc.curMu.Unlock()
	if nc.cur == sc {
		nc.cur = nil
	}
}

// connect dials a new subscription connection, makes it current and hands
// it to the receive goroutine; one that was not taken yet is closed.
func (nc *nodeConn) connect() (*subConn, error) {
	if old := nc.current(); old != nil {
		old.close()
		nc.dropCurrent(old)
	}
	sc, err := nc.dialSub(nc.ctx)
	if err != nil {
		return nil, err
	}
	select {
	case stale := <-nc.handoff:
		stale.close()
	default:
	}
	nc.curMu.Lock()
	nc.cur = sc
	nc.curMu.Unlock()
	nc.handoff <- sc
	return sc, nil
}

// enqueue queues r unless publishing to the node is closed.
func (nc *nodeConn) enqueue(ctx context.Context, r *pubReq) error {
	nc.pubMu.Lock()
	if nc.pubClosed {
		nc.pubMu.Unlock()
		return errNodeGone
	}
	nc.inflight.Add(1)
	nc.pubMu.Unlock()
	q := nc.queue
	if r.async != nil {
		q = nc.lanes[channelHash(r.channel)%uint64(len(nc.lanes))]
	}
	select {
	case q <- r:
		return nil
	default:
	}
	t := time.NewTimer(nc.c.cfg.PublishTimeout)
	defer t.Stop()
	select {
	case q <- r:
		return nil
	case <-t.C:
		nc.inflight.Done()
		return fmt.Errorf("fanout: publish queue of %s full for %s", nc, nc.c.cfg.PublishTimeout)
	case <-ctx.Done():
		nc.inflight.Done()
		return ctx.Err()
	case <-nc.ctx.Done():
		nc.inflight.Done()
		return errNodeGone
	}
}

// publisher drains the queue into pipelines: it blocks for the first
// request, then takes whatever else is already waiting, so an idle client
// adds no latency and a busy one sends large batches.
func (nc *nodeConn) publisher(lane chan *pubReq) {
	defer nc.wg.Done()
	batch := make([]*pubReq, 0, nc.c.cfg.MaxBatch)
	cmds := make([]*redis.IntCmd, 0, nc.c.cfg.MaxBatch)
	xadds := make([]*redis.Cmd, 0, nc.c.cfg.MaxBatch) // nil for a publish without history
	pipe := nc.rdb.Pipeline()                         // Exec empties it, so it is reused
	for {
		batch = batch[:0]
		select {
		case r := <-nc.queue:
			batch = append(batch, r)
		case r := <-lane:
			batch = append(batch, r)
		case <-nc.ctx.Done():
			nc.failQueued(lane)
			return
		}
		// Let the goroutines that are about to publish run before the batch
		// is cut: under load this makes pipelines several times longer (about
		// 5 to 13 messages in the benchmark), which halves Redis's CPU per
		// message; when idle it costs nothing measurable.
		runtime.Gosched()
	fill:
		for len(batch) < cap(batch) {
			select {
			case r := <-nc.queue:
				batch = append(batch, r)
			case r := <-lane:
				batch = append(batch, r)
			default:
				break fill
			}
		}
		cmds, xadds = cmds[:0], xadds[:0]
		now := time.Now()
		for _, r := range batch {
			var x *redis.Cmd
			if r.hist != nil {
				x = nc.queueHistory(nc.ctx, pipe, r.hist, now)
			}
			xadds = append(xadds, x)
			cmds = append(cmds, pipe.Publish(nc.ctx, r.channel, r.data))
		}
		_, err := pipe.Exec(nc.ctx)
		// An error of one command (a full node refusing an XADD) is that
		// command's; an error no PUBLISH carries is the pipeline's (the
		// connection, its handshake) and everyone's.
		perCmd := false
		for i, cmd := range cmds {
			perCmd = perCmd || cmd.Err() != nil || (xadds[i] != nil && xadds[i].Err() != nil)
		}
		for i, r := range batch {
			e := cmds[i].Err()
			if e == nil && err != nil && !errors.Is(err, redis.Nil) && !perCmd {
				e = err
			}
			if x := xadds[i]; x != nil && x.Err() != nil && e == nil {
				nc.historyFailed(x.Err())
			}
			if e != nil && isRefusal(e) {
				e = nc.refusal(e)
			} else if e != nil {
				e = fmt.Errorf("fanout: publish to %s: %w", nc, e)
			}
			if e != nil {
				nc.pubFailed(e)
			} else {
				nc.pubOK.Store(true)
			}
			r.answer(pubResult{node: nc, err: e})
			nc.inflight.Done()
		}
		clear(batch) // drop references to finished requests
		clear(cmds)
		clear(xadds)
	}
}

func (nc *nodeConn) failQueued(lane chan *pubReq) {
	for {
		select {
		case r := <-nc.queue:
			r.answer(pubResult{node: nc, err: errNodeGone})
			nc.inflight.Done()
		case r := <-lane:
			r.answer(pubResult{node: nc, err: errNodeGone})
			nc.inflight.Done()
		default:
			return
		}
	}
}

// release stops new publishes to the node and waits for those in flight.
func (nc *nodeConn) release(ctx context.Context) error {
	nc.pubMu.Lock()
	nc.pubClosed = true
	nc.pubMu.Unlock()
	done := make(chan struct{})
	go func() { nc.inflight.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// close ends the conn; in-flight subscription data is read for up to grace
// first, unless the node's connection ends sooner.
func (nc *nodeConn) close(grace time.Duration) {
	nc.pubMu.Lock()
	nc.pubClosed = true
	nc.pubMu.Unlock()
	if grace > 0 {
		sleep(nc.ctx, grace)
	}
	nc.cancel()
	if sc := nc.current(); sc != nil {
		sc.close()
	}
	nc.wg.Wait()
	select {
	case sc := <-nc.handoff:
		sc.close()
	default:
	}
	nc.rdb.Close()
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
