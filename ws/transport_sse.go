package ws

import (
	"bufio"
	"net/http"
	"net/url"
	"strconv"
)

// The Server-Sent Events transport, GET /sse?channel=a&channel=b&pattern=p,
// for EventSource (docs/protocol.md):
//
//	event: subscribed                      the ok of each subscribe (its id is the channel)
//	event: message                         a message frame, as over WebSocket
//	id: <stream position>                  on messages of history channels
//	event: join, leave                     presence frames (join_leave namespaces), as over WebSocket
//	event: unsubscribed                    the server API ended a subscription
//	event: error                           an op failed: the stream ends after it
//	event: close                           the gateway ends the stream (code, reason)
//	: ping                                 a heartbeat every ping interval
//
// The stream position, the SSE id, covers every channel of the stream at
// once (EventSource remembers only the last id): it is a query string,
// channel=position for each history channel that has one, sorted by
// channel. A reconnecting EventSource sends it back as Last-Event-ID, and
// each channel in it resumes from its position (a subscribe with since:
// exactly once, or recovered:false in its subscribed event).

// sseRetry is the reconnection delay the stream asks EventSource for, in
// milliseconds.
const sseRetry = 1000

// sseFormat writes events; it keeps the stream position.
type sseFormat struct {
	pos url.Values // channel -> newest position
}

func (f *sseFormat) start(w *bufio.Writer) {
	w.WriteString("retry: " + strconv.Itoa(sseRetry) + "\n: pubmesh\n\n")
}

func (f *sseFormat) frame(w *bufio.Writer, o *outFrame) {
	event := "error"
	switch {
	case o.msg:
		event = OpMessage
	case o.reply:
		event = "subscribed"
	case o.event != "":
		event = o.event
	}
	if o.pos != "" && o.channel != "" && (o.msg || o.reply) {
		f.pos.Set(o.channel, o.pos)
		w.WriteString("id: ")
		w.WriteString(f.pos.Encode())
		w.WriteByte('\n')
	}
	w.WriteString("event: ")
	w.WriteString(event)
	w.WriteString("\ndata: ")
	w.Write(oneLine(o.b))
	w.WriteString("\n\n")
}

func (f *sseFormat) heartbeat(w *bufio.Writer) { w.WriteString(": ping\n\n") }

func (f *sseFormat) end(w *bufio.Writer, code int, reason string) {
	w.WriteString("event: close\ndata: ")
	w.Write(closedFrame(code, reason))
	w.WriteString("\n\n")
}

// serveSSE is GET /sse. The credential is an Authorization: Bearer header
// or ?token= (EventSource cannot set headers); without one, the client is
// let in as for WebSocket, where a namespace allows anonymous clients.
// Last-Event-ID (or ?last_event_id=, for a client that opens a new
// EventSource itself) resumes the channels it names.
func (h *Handler) serveSSE(w http.ResponseWriter, r *http.Request) {
	p, l, ok := h.connectClient(w, r, "sse")
	if !ok {
		return
	}
	q := r.URL.Query()
	last := r.Header.Get("Last-Event-ID")
	if last == "" {
		last = q.Get("last_event_id")
	}
	since, err := url.ParseQuery(last)
	if err != nil {
		h.httpError(w, badRequest(nil, "Last-Event-ID is not a stream position: pass the id of an event unchanged"))
		return
	}
	subs := streamSubs(q, since)
	f := &sseFormat{pos: url.Values{}}
	// The resumed channels start at the position sent, so that a
	// reconnect before their next message resumes them from it again.
	for _, sub := range subs {
		if sub.since != "" {
			f.pos.Set(sub.name, sub.since)
		}
	}
	h.serveStream(w, r, p, l, streamRequest{
		transport:   "sse",
		contentType: "text/event-stream; charset=utf-8",
		subs:        subs,
		format:      f,
	})
}

// streamSubs reads a stream's subscriptions from its query: each channel=
// (resumed from its position in since, if any) and each pattern=, once.
func streamSubs(q, since url.Values) []streamSub {
	var subs []streamSub
	seen := map[string]bool{}
	for _, c := range q["channel"] {
		if !seen[c] {
			seen[c] = true
			subs = append(subs, streamSub{name: c, since: since.Get(c)})
		}
	}
	seenP := map[string]bool{}
	for _, pat := range q["pattern"] {
		if !seenP[pat] {
			seenP[pat] = true
			subs = append(subs, streamSub{name: pat, pattern: true})
		}
	}
	return subs
}
