package ws

import (
	"errors"
	"net/http"
	"strconv"
	"time"

	"github.com/gorilla/websocket"
)

// maxBatch bounds how many queued frames one flush may carry, so a ping or
// a close is never stuck behind a long queue.
const maxBatch = 128

// The WebSocket transport: it reads client frames into the session's ops
// (ops.go) and writes the session's queue as text frames. Two goroutines
// serve a connection: the reader (reads frames, calls the ops, owns the
// session's subscriptions) and the writer (wswriter.go: the only one that
// writes frames, started when there is something to write, closes the
// socket at the end).
type wsConn struct {
	s  *session
	ws *websocket.Conn
	bc *bufConn

	readDone   chan struct{} // closed when the reader returns; readErr, peerCode and peerReason are set before
	readErr    error
	peerCode   int    // close code the client sent, 0 if none
	peerReason string // and its reason

	w wsWriter // the writer's state (wswriter.go)

	delay    *time.Timer // linger's, made at its first use; writer only
	deadline time.Time   // the write deadline writeBatch last set; writer only
}

func (h *Handler) serveWS(w http.ResponseWriter, r *http.Request) {
	p, l, ok := h.connectClient(w, r, "ws")
	if !ok {
		return
	}
	if !websocket.IsWebSocketUpgrade(r) {
		writeError(w, http.StatusBadRequest, &Error{Code: CodeBadRequest, Message: "expected a WebSocket upgrade"})
		return
	}
	info, e := clientInfo(r)
	if e != nil {
		h.httpError(w, e)
		return
	}
	release, ok := h.admit(w, p, l)
	if !ok {
		return
	}

	hw := &hijackWriter{ResponseWriter: w}
	wsc, err := h.up.Upgrade(hw, r, nil)
	if err != nil {
		release()
		return // Upgrade has answered
	}
	s := newSession(h, "ws", wsc.RemoteAddr().String(), p, l)
	s.info = info
	c := &wsConn{s: s, ws: wsc, bc: hw.conn, readDone: make(chan struct{})}
	c.w.done = make(chan struct{})
	s.queue.notify = c.kick
	s.onClose = func() { c.bc.capDeadline(time.Now().Add(h.cfg.CloseGrace)); c.kick() }
	s.abort = func() { wsc.NetConn().Close() }
	h.register(s)
	h.metrics.connections.Inc()
	h.metrics.connects.Inc()
	// The connection's reader is a goroutine of its own, and this one
	// returns: net/http's connection (its request, its 4 KiB write
	// buffer and read buffer, this goroutine's deep stack) is freed, which
	// is most of what an idle connection would cost otherwise.
	go func() {
		defer release()
		c.run()
		h.metrics.connections.Dec()
		h.unregister(s)
	}()
}

// admit counts a new session in the handler (refusing it with 503 while
// shutting down) and, for a token, in its subject's connections (refusing
// it with 429 at max_connections_per_subject). The place is taken before
// the WebSocket upgrade or the first byte of a stream, so that a subject
// at its limit gets a status a client can read instead of a close. Each
// true must be followed by one call of release.
func (h *Handler) admit(w http.ResponseWriter, p *Principal, l *limits) (release func(), ok bool) {
	h.mu.Lock()
	down := h.shutdown
	if !down {
		h.running.Add(1)
	}
	h.mu.Unlock()
	if down {
		writeError(w, http.StatusServiceUnavailable, &Error{Code: CodeUnavailable, Message: "gateway shutting down"})
		return nil, false
	}
	if p.Kind != "jwt" {
		return h.running.Done, true
	}
	subject := p.Subject
	if !h.subjects.acquire(subject, time.Now()) {
		h.running.Done()
		h.metrics.subjectConnRefusals.Inc()
		w.Header().Set("Retry-After", "1")
		h.httpError(w, &Error{Code: CodeLimit, Message: "at most " + strconv.Itoa(l.maxConnsPerSubject) +
			" connections per subject: " + strconv.Quote(subject) + " has them all open"})
		return nil, false
	}
	return func() { h.subjects.release(subject, time.Now()); h.running.Done() }, true
}

// run serves the connection until it ends, then leaves every channel.
func (c *wsConn) run() {
	s := c.s
	s.setExpiry(s.principal().ExpiresAt)
	c.startPings()
	c.readLoop()
	// The connection is over: a writer stuck on a dead client gives up
	// within CloseGrace.
	c.bc.capDeadline(time.Now().Add(s.h.cfg.CloseGrace))
	close(c.readDone)
	c.kick()
	<-c.w.done
	s.finished()
}

func (c *wsConn) readLoop() {
	s := c.s
	c.ws.SetReadLimit(int64(s.maxFrameBytes))
	alive := func() { c.ws.SetReadDeadline(time.Now().Add(s.pingInterval + s.h.cfg.PongTimeout)) }
	c.ws.SetPongHandler(func(string) error { alive(); return nil })
	c.ws.SetPingHandler(func(data string) error {
		alive()
		c.owePong(data)
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
				s.close(CloseTooBig, "frame too large")
			}
			return
		}
		if s.isClosing() {
			continue // closing: read until the client's close frame, ignore the rest
		}
		if typ != websocket.TextMessage {
			s.replyError(badRequest(nil, "binary frames are not supported: send JSON text frames"))
			continue
		}
		c.handle(data)
	}
}

// handle runs the op of a client frame on a goroutine of its own and waits
// for it: the ops go deep (JSON, the fanout client, logging) and would
// leave the reader, which spends its life waiting for the next frame, with
// a grown stack for good. The reader still owns the session: it does
// nothing until the op returns.
func (c *wsConn) handle(data []byte) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.s.handle(data)
	}()
	<-done
}

// writeBatch writes f and whatever else is queued (up to maxBatch frames)
// in one flush. With Config.WriteDelay the writer, woken by f, first
// waits that long for more frames to join it: fewer wake-ups and writes
// per frame for a busy subscriber, at the cost of that much latency.
func (c *wsConn) writeBatch(f *outFrame) error {
	s := c.s
	if d := s.h.cfg.WriteDelay; d > 0 && s.queue.len() < maxBatch-1 {
		c.linger(d)
	}
	c.bc.beginBatch()
	compressed := c.bc.compressed()
	// gorilla sets its deadline on the socket at each of its writes;
	// the frames written past it need it set here.
	// Setting a socket's deadline costs a timer update: the socket keeps
	// one set less than WriteTimeout/2 ago, so each batch has at least
	// WriteTimeout/2, at most WriteTimeout, to go out.
	now := time.Now()
	if timeout := s.h.cfg.WriteTimeout; c.deadline.Sub(now) < timeout/2 {
		c.deadline = now.Add(timeout)
		c.ws.SetWriteDeadline(c.deadline)
		if !compressed {
			c.bc.SetWriteDeadline(c.deadline)
		}
	}
	n, msgs := 0, 0
	var err error
	for {
		if err = c.writeFrame(f, compressed); err != nil {
			break
		}
		if f.tr != nil {
			f.tr.written()
		}
		n++
		if f.msg {
			msgs++
		}
		if n == maxBatch {
			break
		}
		var ok bool
		if !s.isClosing() {
			f, ok = s.queue.pop()
		}
		if !ok {
			break
		}
	}
	// Counted before the flush: a client that has read them all sees
	// them counted.
	s.h.metrics.writeBatches.Inc()
	s.h.metrics.messagesOut.Add(float64(msgs))
	if ferr := c.bc.endBatch(); err == nil {
		err = ferr
	}
	s.queue.rewake() // frames left behind by a full batch
	return err
}

// writeFrame writes f into the batch: a shared message frame as is, any
// other frame behind a header of this connection's; through gorilla on a
// compressed connection (a shared frame as a PreparedMessage, compressed
// once for all).
func (c *wsConn) writeFrame(f *outFrame, compressed bool) error {
	if compressed {
		if f.prep != nil {
			pm, err := f.prep.get(f.b)
			if err != nil {
				return err
			}
			return c.ws.WritePreparedMessage(pm)
		}
		return c.ws.WriteMessage(websocket.TextMessage, f.b)
	}
	if f.wire != nil {
		return c.bc.writeFrame(nil, f.wire)
	}
	var h [frameHeadroom]byte
	n := headerLen(len(f.b))
	putHeader(h[:n], len(f.b))
	return c.bc.writeFrame(h[:n], f.b)
}

// linger waits d, or less if the session closes or the client leaves.
func (c *wsConn) linger(d time.Duration) {
	if c.delay == nil {
		c.delay = time.NewTimer(d)
	} else {
		c.delay.Reset(d)
	}
	select {
	case <-c.delay.C:
	case <-c.s.closing:
		c.delay.Stop()
	case <-c.readDone:
		c.delay.Stop()
	}
}

// finish sends the close frame and waits, at most CloseGrace, for the
// client's.
func (c *wsConn) finish() {
	s := c.s
	if s.closeCode == CloseGoingAway {
		// A graceful shutdown: what is already queued for the client was
		// accepted for it, so it goes out before the close frame (within
		// CloseGrace: ended capped the socket's deadline). A slow consumer
		// (4008) or a protocol error gets no such flush.
		c.flushQueued()
	}
	msg := websocket.FormatCloseMessage(s.closeCode, s.closeReason)
	if s.closeCode != CloseTooBig { // gorilla has sent that one itself
		err := c.ws.WriteControl(websocket.CloseMessage, msg, time.Now().Add(s.h.cfg.CloseGrace))
		s.log.Debug("ws: close frame", "code", s.closeCode, "err", err)
	}
	t := time.NewTimer(s.h.cfg.CloseGrace)
	defer t.Stop()
	select {
	case <-c.readDone:
	case <-t.C:
	}
}

// flushQueued writes the frames queued for the client, without waiting
// for more.
func (c *wsConn) flushQueued() {
	for {
		f, ok := c.s.queue.pop()
		if !ok {
			return
		}
		if err := c.writeBatch(f); err != nil {
			return
		}
	}
}

// afterRead ends a connection whose reader stopped: the client closed
// (echo its close frame), or the socket failed or timed out (nothing to
// say).
func (c *wsConn) afterRead() {
	s := c.s
	var ce *websocket.CloseError
	if !errors.As(c.readErr, &ce) {
		if s.ended(websocket.CloseAbnormalClosure, "read failed") {
			s.log.Debug("ws: read failed", "err", c.readErr)
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
	c.ws.WriteControl(websocket.CloseMessage, msg, time.Now().Add(s.h.cfg.CloseGrace))
	if reason == "" {
		reason = "client closed"
	}
	if s.ended(code, reason) {
		s.log.Debug("ws: client closed", "code", code, "reason", reason)
	}
}
