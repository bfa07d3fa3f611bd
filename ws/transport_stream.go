package ws

import (
	"bufio"
	"bytes"
	"encoding/json"
	"net/http"
	"strconv"
	"time"

	"github.com/gorilla/websocket"

	"github.com/pubmesh/pubmesh/clusterconfig"
)

// The streaming transports: Server-Sent Events (GET /sse, transport_sse.go)
// and newline-delimited JSON (GET /api/stream/{channel}). Both are one
// HTTP response that stays open: the request names the subscriptions, the
// gateway writes the session's queue into the response as it fills, and
// the client leaves by closing it. They differ only in how a frame is
// written (streamFormat).

// streamFormat writes the frames of one streaming transport.
type streamFormat interface {
	// start writes what comes before the first frame (headers are set).
	start(w *bufio.Writer)
	// frame writes one queued frame.
	frame(w *bufio.Writer, f *outFrame)
	// heartbeat writes what keeps an idle stream alive through proxies.
	heartbeat(w *bufio.Writer)
	// end writes the session's end (code and reason of its close).
	end(w *bufio.Writer, code int, reason string)
}

// streamSub is one subscription a stream asks for.
type streamSub struct {
	name    string
	pattern bool
	since   string
}

// streamRequest is a streaming transport's parsed request.
type streamRequest struct {
	transport   string // "sse" or "stream": the metric label and the session's
	contentType string
	subs        []streamSub
	format      streamFormat
}

// serveStream authenticates r (as a WebSocket upgrade is), checks every
// subscription it asks for (answering a refusal with an HTTP status and
// the JSON error body), then streams the session until the client leaves
// or the session closes. Errors after the first byte are written by the
// format (SSE: event error) before the stream ends.
func (h *Handler) serveStream(w http.ResponseWriter, r *http.Request, p *Principal, l *limits, req streamRequest) {
	if e := h.checkStream(l, p, req.subs); e != nil {
		h.httpError(w, e)
		return
	}
	info, e := clientInfo(r) // as at a WebSocket connect: presence shows it
	if e != nil {
		h.httpError(w, e)
		return
	}
	release, ok := h.admit(w, p, l)
	if !ok {
		return
	}
	defer release()

	s := newSession(h, req.transport, r.RemoteAddr, p, l)
	s.info = info
	rc := http.NewResponseController(w)
	// The server's timeouts are for short requests: a stream has its own
	// (WriteTimeout per batch; the client's leaving ends the request).
	rc.SetReadDeadline(time.Time{})
	rc.SetWriteDeadline(time.Time{})
	s.abort = func() { rc.SetWriteDeadline(time.Now()) }
	h.register(s)
	h.metrics.streams.WithLabelValues(req.transport).Inc()
	h.metrics.streamsTotal.WithLabelValues(req.transport).Inc()
	defer h.metrics.streams.WithLabelValues(req.transport).Dec()
	defer h.unregister(s)

	hd := w.Header()
	if origin := r.Header.Get("Origin"); origin != "" {
		// checkOrigin let it in: a cross-origin EventSource may read the
		// stream (a same-origin one ignores the header).
		hd.Set("Access-Control-Allow-Origin", origin)
		hd.Set("Vary", "Origin")
	}
	hd.Set("Content-Type", req.contentType)
	hd.Set("Cache-Control", "no-store")
	hd.Set("X-Content-Type-Options", "nosniff")
	hd.Set("X-Accel-Buffering", "no") // nginx: do not buffer the stream
	w.WriteHeader(http.StatusOK)
	bw := bufio.NewWriterSize(w, 4<<10)
	req.format.start(bw)
	bw.Flush()
	rc.Flush()

	s.setExpiry(p.ExpiresAt)
	writeDone := make(chan struct{})
	go func() {
		defer close(writeDone)
		h.writeStream(s, rc, bw, req.format)
	}()
	go func() {
		select {
		case <-r.Context().Done():
			s.ended(websocket.CloseNormalClosure, "client left")
		case <-s.closing:
		}
	}()
	for _, sub := range req.subs {
		if s.isClosing() {
			break
		}
		id, _ := json.Marshal(sub.name)
		var e *Error
		if sub.pattern {
			e = s.psubscribe(Frame{Op: OpPSubscribe, Pattern: sub.name, ID: id})
		} else {
			e = s.subscribe(Frame{Op: OpSubscribe, Channel: sub.name, ID: id, Since: sub.since})
		}
		if e != nil {
			// After the first byte an error ends the stream: the client
			// sees why (SSE: event error) and reconnects if it wants.
			s.replyError(e)
			s.close(CloseInternal, e.Message)
		}
	}
	<-writeDone
	s.finished()
}

// checkStream validates and authorizes every subscription of a stream
// before it starts, so that a refusal is an HTTP status. The ops check
// again when they run (the configuration may change in between).
func (h *Handler) checkStream(l *limits, p *Principal, subs []streamSub) *Error {
	if len(subs) == 0 {
		return badRequest(nil, "name at least one channel (channel=) or pattern (pattern=)")
	}
	if max := l.maxSubscriptions; max >= 0 && len(subs) > max {
		return &Error{Code: CodeLimit, Message: "at most " + strconv.Itoa(max) + " subscriptions per connection"}
	}
	for _, sub := range subs {
		var e *Error
		var ns clusterconfig.Namespace
		if sub.pattern {
			e = h.authorizePattern(l, nil, p, sub.name)
		} else {
			ns, e = h.authorize(l, nil, p, OpSubscribe, sub.name)
			if e == nil && sub.since != "" && ns.HistorySize == 0 {
				e = noHistory(nil, sub.name, ns)
			}
		}
		if e != nil {
			return e
		}
	}
	return nil
}

// writeStream is a stream's only writer: it writes the queued frames, a
// batch per flush, and a heartbeat every ping interval, until the session
// closes; then what is queued (unless the client is too slow for it) and
// the end.
func (h *Handler) writeStream(s *session, rc *http.ResponseController, bw *bufio.Writer, format streamFormat) {
	ping := time.NewTicker(s.pingInterval)
	defer ping.Stop()
	flush := func() error {
		rc.SetWriteDeadline(time.Now().Add(h.cfg.WriteTimeout))
		if err := bw.Flush(); err != nil {
			return err
		}
		return rc.Flush()
	}
	batch := func(f *outFrame) error {
		msgs := 0
		for n := 0; ; n++ {
			format.frame(bw, f)
			if f.tr != nil {
				f.tr.written()
			}
			if f.msg {
				msgs++
			}
			if n+1 == maxBatch {
				break
			}
			var ok bool
			if f, ok = s.queue.pop(); !ok {
				break
			}
		}
		s.queue.rewake() // frames left behind by a full batch
		h.metrics.writeBatches.Inc()
		h.metrics.messagesOut.Add(float64(msgs))
		return flush()
	}
	for {
		var err error
		select {
		case <-s.queue.wake:
			if f, ok := s.queue.pop(); ok {
				err = batch(f)
			}
		case <-ping.C:
			format.heartbeat(bw)
			err = flush()
		case <-s.closing:
			if s.closeCode == websocket.CloseNormalClosure { // the client left: nobody reads
				return
			}
			deadline := time.Now().Add(h.cfg.CloseGrace)
		drain:
			for s.closeCode != CloseSlowConsumer && time.Now().Before(deadline) {
				f, ok := s.queue.pop()
				if !ok || batch(f) != nil {
					break drain
				}
			}
			format.end(bw, s.closeCode, s.closeReason)
			rc.SetWriteDeadline(deadline)
			if bw.Flush() == nil {
				rc.Flush()
			}
			return
		}
		if err != nil {
			s.ended(websocket.CloseAbnormalClosure, "write failed")
			s.log.Debug("ws: stream write failed", "err", err)
			return
		}
	}
}

// ndjsonFormat is GET /api/stream/{channel}: each frame on a line of its
// own (the ok of the subscribe, then the message frames); an empty line is
// a heartbeat; when the gateway ends the stream, a close frame is its last
// line.
type ndjsonFormat struct{}

func (ndjsonFormat) start(*bufio.Writer) {}

func (ndjsonFormat) frame(w *bufio.Writer, f *outFrame) {
	w.Write(oneLine(f.b))
	w.WriteByte('\n')
}

func (ndjsonFormat) heartbeat(w *bufio.Writer) { w.WriteByte('\n') }

func (ndjsonFormat) end(w *bufio.Writer, code int, reason string) {
	w.Write(closedFrame(code, reason))
	w.WriteByte('\n')
}

// serveStreamHTTP is GET /api/stream/{channel}?since=: newline-delimited
// JSON until the client leaves, so that `curl -N` is a subscriber.
func (h *Handler) serveStreamHTTP(w http.ResponseWriter, r *http.Request) {
	if !h.originAllowed(w, r) {
		return
	}
	p, channel, ok := h.httpAuthenticate(w, r, OpSubscribe)
	if !ok {
		return
	}
	h.serveStream(w, r, p, h.limits(), streamRequest{
		transport:   "stream",
		contentType: "application/x-ndjson",
		subs:        []streamSub{{name: channel, since: r.URL.Query().Get("since")}},
		format:      ndjsonFormat{},
	})
}

// serveStreamQuery is GET /api/stream?channel=a&channel=b&pattern=p: the
// NDJSON stream of several channels and patterns at once (since= is for
// the one-channel form).
func (h *Handler) serveStreamQuery(w http.ResponseWriter, r *http.Request) {
	p, l, ok := h.connectClient(w, r, "stream")
	if !ok {
		return
	}
	h.serveStream(w, r, p, l, streamRequest{
		transport:   "stream",
		contentType: "application/x-ndjson",
		subs:        streamSubs(r.URL.Query(), nil),
		format:      ndjsonFormat{},
	})
}

// oneLine returns the JSON frame b without line breaks: a payload
// published raw (not through pubmesh) is sent as it is, whitespace
// included, and a line break inside it would end an NDJSON line or an SSE
// data field. JSON strings cannot hold a raw line break, so compacting
// removes only whitespace.
func oneLine(b []byte) []byte {
	if bytes.IndexByte(b, '\n') < 0 && bytes.IndexByte(b, '\r') < 0 {
		return b
	}
	var buf bytes.Buffer
	if json.Compact(&buf, b) != nil {
		return b
	}
	return buf.Bytes()
}

// closedFrame is the last frame of a stream the gateway ends:
// {"op":"close","code":4008,"reason":"slow consumer"}, with the code a
// WebSocket client would get in its close frame.
func closedFrame(code int, reason string) []byte {
	b := openReply(OpClose, nil, 32+len(reason))
	b = append(b, `,"code":`...)
	b = strconv.AppendInt(b, int64(code), 10)
	b = append(b, `,"reason":`...)
	b = appendString(b, reason)
	return append(b, '}')
}

// originAllowed checks r's Origin for a client connection (WebSocket or a
// stream), answering 403 when it is not allowed.
func (h *Handler) originAllowed(w http.ResponseWriter, r *http.Request) bool {
	if h.checkOrigin(r) {
		return true
	}
	h.metrics.authFailures.WithLabelValues("origin").Inc()
	writeError(w, http.StatusForbidden, &Error{Code: CodeForbidden, Message: "origin not allowed"})
	return false
}

// connectClient is the start of every client connection (WebSocket, SSE,
// a stream of several channels): the origin, then the credential. Without
// one a client may connect while a namespace allows anonymous clients;
// each subscribe and publish then checks its channel's namespace. It
// answers the refusal itself.
func (h *Handler) connectClient(w http.ResponseWriter, r *http.Request, transport string) (*Principal, *limits, bool) {
	if !h.originAllowed(w, r) {
		return nil, nil, false
	}
	l := h.limits()
	p, err := h.authenticate(r, l.anonymous, transport)
	if err != nil {
		h.refuse(w, err)
		return nil, nil, false
	}
	return p, l, true
}
