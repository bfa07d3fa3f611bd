package ws

import (
	"context"
	"encoding/json"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// outFrame is one text frame for a client; msg marks message frames (for
// the metric), as opposed to replies. A message's outFrame is allocated
// once and shared by every subscriber's queue, whose slots are pointers:
// a 256-frame queue costs 2 KiB per session.
type outFrame struct {
	b   []byte // shared between sessions: never modified
	msg bool
	id  string // a message's id, to drop it after a resume that delivered it from history
	pos string // a message's position (history channels), or a subscribe's: the SSE id
	// channel of a message, or of the ok of a subscribe (reply set): the
	// streaming transports read them, the WebSocket one only b.
	channel string
	reply   bool // the ok of a subscribe (SSE event subscribed)
	// event names a frame that is neither a message nor a reply for SSE
	// (join, leave, unsubscribed); empty: an error frame.
	event string
	// wire is the whole WebSocket frame (header and b), for a message
	// the hub shares between subscribers (sharedFrame); nil otherwise, and
	// the writer frames b itself.
	wire []byte
	// prep is b as a PreparedMessage for the connections that negotiated
	// compression; set on shared frames while Config.Compression is on.
	prep *preparedFrame
	// tr is the write span of a traced shared message frame (trace.go).
	tr *frameTrace
}

// session is one client, whatever its transport (WebSocket, SSE, HTTP
// streaming): its principal, the limits it was opened under, its
// subscriptions, its resume holds and its bounded outbound queue. The
// operations (ops.go) act on a session; a transport (transport_*.go) only
// reads frames into them and writes the queue out.
//
// Goroutines: the session's owner (a transport's reader, or the goroutine
// that serves an SSE stream) calls the ops and alone touches subs; the
// transport's writer alone drains send; anyone may call enqueue, deliver
// and close.
type session struct {
	h         *Handler
	transport string // "ws", "sse", "stream"
	remote    string // the client's address
	p         atomic.Pointer[Principal]
	limiter   *connLimiter // this session's own publish limit; nil for a token (see allowPublish)
	log       *slog.Logger

	// Taken from the cluster configuration when the session opens: a
	// change applies to the sessions opened after it.
	maxFrameBytes int
	pingInterval  time.Duration

	ctx    context.Context // canceled by close: aborts a pending subscribe
	cancel context.CancelFunc

	queue *frameQueue // frames for the writer, bounded by SendQueue

	closeOnce   sync.Once
	closing     chan struct{} // closed by close, after closeCode and closeReason are set
	closeCode   int
	closeReason string
	// onClose runs once, when the session starts closing (the WebSocket
	// transport caps its write deadline there); abort drops the client
	// at once (Shutdown out of time). Both are set before the session is
	// shared, by its transport.
	onClose func()
	abort   func()

	subs map[string]*channel // owner goroutine only; patterns under patternKey

	holds holds // channels being resumed: their live frames wait (resume.go)

	expiryMu sync.Mutex
	expiry   *time.Timer // closes the session with 4001 at the token's exp; nil without one

	// id names the session in the cluster (presence entries, join and
	// leave frames, POST /api/disconnect); info is what the client
	// supplied at connect (?info=, at most 1 KiB of JSON) for presence.
	id          string
	info        json.RawMessage
	connectedAt time.Time
	// inPresence holds the channels whose presence has this session's
	// entry. Owner goroutine only.
	inPresence map[string]bool
	// evicted holds the channels the server API unsubscribed the session
	// from (hub.evict): a subscribe to one of them starts afresh.
	evicted sync.Map
}

func newSession(h *Handler, transport, remote string, p *Principal, l *limits) *session {
	ctx, cancel := context.WithCancel(h.ctx)
	var lim *connLimiter
	if p.Kind != "jwt" { // a token's sessions share their subject's bucket
		lim = newConnLimiter(l)
	}
	s := &session{
		h: h, transport: transport, remote: remote,
		limiter:       lim,
		log:           h.log.With("transport", transport, "remote", remote, "sub", p.Subject),
		maxFrameBytes: l.maxFrameBytes,
		pingInterval:  l.pingInterval,
		ctx:           ctx,
		cancel:        cancel,
		queue:         newFrameQueue(l.sendQueue),
		closing:       make(chan struct{}),
		subs:          make(map[string]*channel),
		onClose:       func() {},
		abort:         func() {},
		id:            newSessionID(),
		connectedAt:   time.Now().UTC(),
	}
	s.p.Store(p)
	return s
}

// principal is who the session acts as now (refresh replaces it).
func (s *session) principal() *Principal { return s.p.Load() }

// enqueue hands f to the writer without blocking. If the queue is full the
// client is not reading fast enough: the session is closed with 4008
// "slow consumer" and f is dropped.
func (s *session) enqueue(f *outFrame) bool {
	if s.isClosing() {
		return false
	}
	if s.queue.push(f) {
		return true
	}
	if s.close(CloseSlowConsumer, "slow consumer") {
		s.h.metrics.slowConsumers.Inc()
		s.log.Info("ws: closing slow consumer", "queue", s.queue.limit)
	}
	return false
}

// reply queues a reply to the client's own request. Unlike a message, a
// reply may wait for room in the queue, up to WriteTimeout: meanwhile the
// owner stops reading requests, so a client that sends requests faster
// than it reads the replies is slowed down (by TCP) rather than closed as a
// slow consumer; one that reads nothing is closed after WriteTimeout.
func (s *session) reply(f *outFrame) bool {
	if s.isClosing() {
		return false
	}
	if s.queue.push(f) {
		return true
	}
	t := time.NewTimer(s.h.cfg.WriteTimeout)
	defer t.Stop()
	for {
		select {
		case <-s.queue.room:
			if s.queue.push(f) {
				return true
			}
		case <-s.closing:
			return false
		case <-t.C:
			return s.enqueue(f) // still full: closed as a slow consumer
		}
	}
}

func (s *session) replyError(e *Error) {
	s.h.metrics.errors.WithLabelValues(e.Code).Inc()
	s.reply(&outFrame{b: errorFrame(e)})
}

// close starts closing the session with code and reason, counted in
// pubmesh_ws_closes_total; only the first call (close or ended) counts, and
// it reports whether it was the first. From now on every write must end
// within CloseGrace.
func (s *session) close(code int, reason string) bool {
	if s.ended(code, reason) {
		s.h.metrics.closes.WithLabelValues(strconv.Itoa(code)).Inc()
		return true
	}
	return false
}

// ended is close for an end the gateway did not choose (the client closed,
// the socket failed): not counted.
func (s *session) ended(code int, reason string) bool {
	first := false
	s.closeOnce.Do(func() {
		first = true
		s.closeCode, s.closeReason = code, reason
		close(s.closing)
		s.cancel()
		s.onClose()
	})
	return first
}

// isClosing reports whether close or ended was called.
func (s *session) isClosing() bool {
	select {
	case <-s.closing:
		return true
	default:
		return false
	}
}

// setExpiry arms the token expiry: at exp the session closes with 4001.
// A zero exp (API keys, anonymous) disarms it. refresh calls it again with
// the new token's exp.
func (s *session) setExpiry(exp time.Time) {
	s.expiryMu.Lock()
	defer s.expiryMu.Unlock()
	if s.expiry != nil {
		s.expiry.Stop()
		s.expiry = nil
	}
	if !exp.IsZero() {
		s.expiry = time.AfterFunc(time.Until(exp), func() { s.close(CloseTokenExpired, "token expired") })
	}
}

// finished releases what the session holds once its transport is done
// with it: the expiry timer and every subscription. Owner goroutine only.
func (s *session) finished() {
	s.setExpiry(time.Time{})
	s.cancel()
	for name, ch := range s.subs {
		s.h.hub.release(s, ch)
		delete(s.subs, name)
		s.h.metrics.subscriptions.Dec()
		s.presenceLeave(name)
	}
}

// register adds s to the handler's sessions, or reports false when the
// handler is shutting down (then s is closed with 1001 already).
func (h *Handler) register(s *session) bool {
	h.mu.Lock()
	h.sessions[s] = struct{}{}
	down := h.shutdown
	h.mu.Unlock()
	if down {
		s.close(CloseGoingAway, "gateway shutting down")
	}
	return !down
}

func (h *Handler) unregister(s *session) {
	h.mu.Lock()
	delete(h.sessions, s)
	h.mu.Unlock()
}
