package ws

import (
	"context"
	"errors"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/gorilla/websocket"
)

// maxBatch bounds how many queued frames one flush may carry, so a ping or
// a close is never stuck behind a long queue.
const maxBatch = 128

// outFrame is one text frame for a client; msg marks message frames (for
// the metric), as opposed to replies. A message's outFrame is allocated
// once and shared by every subscriber's queue, whose slots are pointers:
// a 256-frame queue costs 2 KiB per connection.
type outFrame struct {
	b   []byte // shared between connections: never modified
	msg bool
	id  string // a message's id, to drop it after a resume that delivered it from history
}

// conn is one WebSocket client. Two goroutines own it: the reader (the
// ServeHTTP goroutine: reads frames, handles ops, owns subs) and the
// writer (writeLoop: the only one that writes frames, closes the socket
// when it returns). Anyone may call enqueue and close.
type conn struct {
	h       *Handler
	ws      *websocket.Conn
	bc      *bufConn
	p       *Principal
	limiter *connLimiter // this connection's own publish limit; nil for a token (see allowPublish)
	log     *slog.Logger

	// Taken from the cluster configuration when the connection opens: a
	// change applies to the connections opened after it.
	maxFrameBytes int
	pingInterval  time.Duration

	ctx    context.Context // canceled by close: aborts a pending subscribe
	cancel context.CancelFunc

	send  chan *outFrame // frames for the writer; never closed, bounded by SendQueue
	pings chan string    // pong payloads the writer owes the client

	closeOnce   sync.Once
	closing     chan struct{} // closed by close, after closeCode and closeReason are set
	closeCode   int
	closeReason string

	readDone   chan struct{} // closed when the reader returns; readErr, peerCode and peerReason are set before
	readErr    error
	peerCode   int           // close code the client sent, 0 if none
	peerReason string        // and its reason
	writeDone  chan struct{} // closed when writeLoop returns

	subs map[string]*channel // reader goroutine only

	holds holds // channels being resumed: their live frames wait (resume.go)
}

func newConn(h *Handler, ws *websocket.Conn, bc *bufConn, p *Principal, l *limits) *conn {
	ctx, cancel := context.WithCancel(h.ctx)
	var lim *connLimiter
	if p.Kind != "jwt" { // a token's connections share their subject's bucket
		lim = newConnLimiter(l)
	}
	return &conn{
		h: h, ws: ws, bc: bc, p: p,
		limiter:       lim,
		log:           h.log.With("remote", ws.RemoteAddr().String(), "sub", p.Subject),
		maxFrameBytes: l.maxFrameBytes,
		pingInterval:  l.pingInterval,
		ctx:           ctx,
		cancel:        cancel,
		send:          make(chan *outFrame, l.sendQueue),
		pings:         make(chan string, 1),
		closing:       make(chan struct{}),
		readDone:      make(chan struct{}),
		writeDone:     make(chan struct{}),
		subs:          make(map[string]*channel),
	}
}

// enqueue hands f to the writer without blocking. If the queue is full the
// client is not reading fast enough: the connection is closed with 4008
// "slow consumer" and f is dropped.
func (c *conn) enqueue(f *outFrame) bool {
	select {
	case c.send <- f:
		return true
	case <-c.closing:
		return false
	default:
	}
	if c.close(CloseSlowConsumer, "slow consumer") {
		c.h.metrics.slowConsumers.Inc()
		c.log.Info("ws: closing slow consumer", "queue", cap(c.send))
	}
	return false
}

// reply queues a reply to the client's own request. Unlike a message, a
// reply may wait for room in the queue, up to WriteTimeout: meanwhile the
// reader stops reading requests, so a client that sends requests faster
// than it reads the replies is slowed down (by TCP) rather than closed as a
// slow consumer; one that reads nothing is closed after WriteTimeout.
func (c *conn) reply(f *outFrame) bool {
	select {
	case c.send <- f:
		return true
	case <-c.closing:
		return false
	default:
	}
	t := time.NewTimer(c.h.cfg.WriteTimeout)
	defer t.Stop()
	select {
	case c.send <- f:
		return true
	case <-c.closing:
		return false
	case <-t.C:
		return c.enqueue(f) // still full: closed as a slow consumer
	}
}

// close starts closing the connection with code and reason, counted in
// pubmesh_ws_closes_total; only the first call (close or ended) counts, and
// it reports whether it was the first. From now on every write must end
// within CloseGrace.
func (c *conn) close(code int, reason string) bool {
	if c.ended(code, reason) {
		c.h.metrics.closes.WithLabelValues(strconv.Itoa(code)).Inc()
		return true
	}
	return false
}

// ended is close for an end the gateway did not choose (the client closed,
// the socket failed): not counted.
func (c *conn) ended(code int, reason string) bool {
	first := false
	c.closeOnce.Do(func() {
		first = true
		c.closeCode, c.closeReason = code, reason
		close(c.closing)
		c.cancel()
		c.bc.capDeadline(time.Now().Add(c.h.cfg.CloseGrace))
	})
	return first
}

// run serves the connection until it ends, then leaves every channel.
func (c *conn) run() {
	var expiry *time.Timer
	if !c.p.ExpiresAt.IsZero() {
		expiry = time.AfterFunc(time.Until(c.p.ExpiresAt), func() { c.close(CloseTokenExpired, "token expired") })
	}
	go c.writeLoop()
	c.readLoop()
	// The connection is over: a writer stuck on a dead client gives up
	// within CloseGrace.
	c.bc.capDeadline(time.Now().Add(c.h.cfg.CloseGrace))
	close(c.readDone)
	<-c.writeDone
	if expiry != nil {
		expiry.Stop()
	}
	c.cancel()
	for name, ch := range c.subs {
		c.h.hub.release(c, ch)
		delete(c.subs, name)
		c.h.metrics.subscriptions.Dec()
	}
}

func (c *conn) readLoop() {
	c.ws.SetReadLimit(int64(c.maxFrameBytes))
	alive := func() { c.ws.SetReadDeadline(time.Now().Add(c.pingInterval + c.h.cfg.PongTimeout)) }
	c.ws.SetPongHandler(func(string) error { alive(); return nil })
	c.ws.SetPingHandler(func(data string) error {
		alive()
		select {
		case c.pings <- data:
		default: // one pong owed is enough
		}
		return nil
	})
	// The writer echoes the close frame; gorilla's default handler would
	// write it from this goroutine.
	c.ws.SetCloseHandler(func(code int, text string) error { c.peerCode, c.peerReason = code, text; return nil })
	for {
		alive()
		typ, data, err := c.ws.ReadMessage()
		if err != nil {
			c.readErr = err
			if errors.Is(err, websocket.ErrReadLimit) {
				// gorilla has sent the 1009 close frame.
				c.close(CloseTooBig, "frame too large")
			}
			return
		}
		select {
		case <-c.closing:
			continue // closing: read until the client's close frame, ignore the rest
		default:
		}
		if typ != websocket.TextMessage {
			c.replyError(badRequest(nil, "binary frames are not supported: send JSON text frames"))
			continue
		}
		c.handle(data)
	}
}

func (c *conn) handle(data []byte) {
	f, err := DecodeFrame(data)
	if err != nil {
		c.replyError(err.(*Error))
		return
	}
	var e *Error
	switch f.Op {
	case OpPing:
	case OpSubscribe:
		if e = c.subscribe(f); e == nil {
			return // subscribe queued the reply itself
		}
	case OpUnsubscribe:
		e = c.unsubscribe(f)
	case OpPublish:
		e = c.publish(f)
	case OpHistory:
		if e = c.history(f); e == nil {
			return // history queued the reply itself
		}
	}
	if e != nil {
		c.replyError(e)
		return
	}
	c.reply(&outFrame{b: okFrame(f.ID)})
}

func (c *conn) replyError(e *Error) {
	c.h.metrics.errors.WithLabelValues(e.Code).Inc()
	c.reply(&outFrame{b: errorFrame(e)})
}

// subscribe applies the configuration in force now: a subscription made
// under an earlier one stays, even above a lowered limit or in a namespace
// closed since.
func (c *conn) subscribe(f Frame) *Error {
	l := c.h.limits()
	ns, e := c.h.authorize(l, f.ID, c.p, OpSubscribe, f.Channel)
	if e != nil {
		return e
	}
	if _, ok := c.subs[f.Channel]; ok {
		// Already subscribed (since or not): the subscription goes on.
		c.reply(&outFrame{b: okFrame(f.ID)})
		return nil
	}
	if f.Since != "" && ns.HistorySize == 0 {
		return noHistory(f.ID, f.Channel, ns)
	}
	if max := l.maxSubscriptions; max >= 0 && len(c.subs) >= max {
		return &Error{Code: CodeLimit, Message: "at most " + strconv.Itoa(max) + " subscriptions per connection", ID: f.ID}
	}
	if f.Since != "" {
		return c.resume(f)
	}
	ch, err := c.h.hub.subscribe(c.ctx, c, f.Channel, func(pos string) []byte { return subscribedFrame(f.ID, pos) })
	if err != nil {
		if c.ctx.Err() != nil {
			return nil // closing: no reply needed
		}
		return &Error{Code: CodeUnavailable, Message: "subscribe failed: " + err.Error(), ID: f.ID}
	}
	c.subs[f.Channel] = ch
	c.h.metrics.subscriptions.Inc()
	return nil
}

func (c *conn) unsubscribe(f Frame) *Error {
	if e := c.h.checkChannel(f.ID, f.Channel); e != nil {
		return e
	}
	if ch, ok := c.subs[f.Channel]; ok {
		delete(c.subs, f.Channel)
		c.h.hub.release(c, ch)
		c.h.metrics.subscriptions.Dec()
	}
	return nil
}

func (c *conn) publish(f Frame) *Error {
	l := c.h.limits()
	ns, e := c.h.authorize(l, f.ID, c.p, OpPublish, f.Channel)
	if e != nil {
		return e
	}
	data, e := c.h.checkData(f.ID, f.Data, l.maxPublishBytes(ns))
	if e != nil {
		return e
	}
	if e := c.h.allowPublish(l, f.ID, c.p, c.limiter, ""); e != nil {
		return e
	}
	return c.h.publish(c.ctx, f.ID, f.Channel, data, "ws")
}

// writeLoop is the only writer of frames. It closes the socket when it
// returns.
func (c *conn) writeLoop() {
	defer close(c.writeDone)
	defer c.ws.Close()
	ping := time.NewTicker(c.pingInterval)
	defer ping.Stop()
	for {
		select {
		case <-c.closing:
			c.finish()
			return
		default:
		}
		var err error
		select {
		case f := <-c.send:
			err = c.writeBatch(f)
		case data := <-c.pings:
			err = c.ws.WriteControl(websocket.PongMessage, []byte(data), time.Now().Add(c.h.cfg.WriteTimeout))
		case <-ping.C:
			err = c.ws.WriteControl(websocket.PingMessage, nil, time.Now().Add(c.h.cfg.WriteTimeout))
		case <-c.closing:
		case <-c.readDone:
			c.afterRead()
			return
		}
		if err != nil {
			c.log.Debug("ws: write failed", "err", err)
			return
		}
	}
}

// writeBatch writes f and whatever else is queued (up to maxBatch frames)
// in one flush.
func (c *conn) writeBatch(f *outFrame) error {
	c.bc.beginBatch()
	c.ws.SetWriteDeadline(time.Now().Add(c.h.cfg.WriteTimeout))
	n, msgs := 0, 0
	var err error
	for {
		if err = c.ws.WriteMessage(websocket.TextMessage, f.b); err != nil {
			break
		}
		n++
		if f.msg {
			msgs++
		}
		if n == maxBatch {
			break
		}
		var ok bool
		select {
		case f, ok = <-c.send:
		case <-c.closing:
		default:
		}
		if !ok {
			break
		}
	}
	if ferr := c.bc.endBatch(); err == nil {
		err = ferr
	}
	c.h.metrics.writeBatches.Inc()
	c.h.metrics.messagesOut.Add(float64(msgs))
	return err
}

// finish sends the close frame and waits, at most CloseGrace, for the
// client's.
func (c *conn) finish() {
	if c.closeCode == CloseGoingAway {
		// A graceful shutdown: what is already queued for the client was
		// accepted for it, so it goes out before the close frame (within
		// CloseGrace: ended capped the socket's deadline). A slow consumer
		// (4008) or a protocol error gets no such flush.
		c.flushQueued()
	}
	msg := websocket.FormatCloseMessage(c.closeCode, c.closeReason)
	if c.closeCode != CloseTooBig { // gorilla has sent that one itself
		err := c.ws.WriteControl(websocket.CloseMessage, msg, time.Now().Add(c.h.cfg.CloseGrace))
		c.log.Debug("ws: close frame", "code", c.closeCode, "err", err)
	}
	t := time.NewTimer(c.h.cfg.CloseGrace)
	defer t.Stop()
	select {
	case <-c.readDone:
	case <-t.C:
	}
}

// flushQueued writes the frames queued for the client, without waiting
// for more.
func (c *conn) flushQueued() {
	for {
		select {
		case f := <-c.send:
			if err := c.writeBatch(f); err != nil {
				return
			}
		default:
			return
		}
	}
}

// afterRead ends a connection whose reader stopped: the client closed
// (echo its close frame), or the socket failed or timed out (nothing to
// say).
func (c *conn) afterRead() {
	var ce *websocket.CloseError
	if !errors.As(c.readErr, &ce) {
		if c.ended(websocket.CloseAbnormalClosure, "read failed") {
			c.log.Debug("ws: read failed", "err", c.readErr)
		}
		return
	}
	code, reason := c.peerCode, c.peerReason
	// Echo the client's code and reason (RFC 6455 5.5.1): the client sees
	// its own close confirmed, and the reason reaches the logs.
	msg := websocket.FormatCloseMessage(code, reason)
	if code == websocket.CloseNoStatusReceived {
		msg = []byte{}
	}
	c.ws.WriteControl(websocket.CloseMessage, msg, time.Now().Add(c.h.cfg.CloseGrace))
	if reason == "" {
		reason = "client closed"
	}
	if c.ended(code, reason) {
		c.log.Debug("ws: client closed", "code", code, "reason", reason)
	}
}
