package ws

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"

	"github.com/pubmesh/pubmesh/clusterconfig"
	"github.com/pubmesh/pubmesh/fanout"
)

// HistoryLimit is the most messages one history read returns (the history
// op and GET /api/history), and the limit when none is given: a larger one
// is lowered to it. Page through more with since set to the reply's pos.
const HistoryLimit = 1000

// historyReplyBytes bounds the messages of one history reply: past it the
// reply ends early, with at least one message, as a smaller limit would
// have (its pos is then the last included message's).
const historyReplyBytes = 1 << 20

// historyOp is the history read of every transport, authorized as a
// subscribe (the channel name, the namespace rule, the claims).
func (h *Handler) historyOp(ctx context.Context, id json.RawMessage, p *Principal, channel, since string,
	limit int, reverse bool, transport string) (*fanout.History, *Error) {
	l := h.limits()
	ns, e := h.authorize(l, id, p, OpSubscribe, channel)
	if e != nil {
		return nil, e
	}
	return h.readHistory(ctx, id, channel, ns, since, limit, reverse, transport)
}

// serveHistory is GET /api/history/{channel}?since=&limit=&reverse=,
// authorized as a subscribe (without a credential only in a namespace that
// allows anonymous subscribers):
//
//	{"messages":[{"channel":…,"data":…,"id":…,"ts":…,"pos":…},…],"pos":"…","recovered":true}
func (h *Handler) serveHistory(w http.ResponseWriter, r *http.Request) {
	p, channel, ok := h.httpAuthenticate(w, r, OpSubscribe)
	if !ok {
		return
	}
	q := r.URL.Query()
	var err error
	limit := 0
	if s := q.Get("limit"); s != "" {
		if limit, err = strconv.Atoi(s); err != nil || limit < 0 {
			h.httpError(w, badRequest(nil, "limit must be a non-negative integer, not %q", truncate(s, 32)))
			return
		}
	}
	reverse := false
	if s := q.Get("reverse"); s != "" {
		if reverse, err = strconv.ParseBool(s); err != nil {
			h.httpError(w, badRequest(nil, "reverse must be true or false, not %q", truncate(s, 32)))
			return
		}
	}
	hist, e := h.historyOp(r.Context(), nil, p, channel, q.Get("since"), limit, reverse, "http")
	if e != nil {
		h.httpError(w, e)
		return
	}
	b := appendHistory([]byte{'{'}, channel, hist, reverse)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	w.Write(append(b, '}', '\n'))
}

// readHistory reads channel's history through the fanout client, limit
// lowered to HistoryLimit (0: HistoryLimit), and counts the request.
func (h *Handler) readHistory(ctx context.Context, id json.RawMessage, channel string, ns clusterconfig.Namespace,
	since string, limit int, reverse bool, transport string) (*fanout.History, *Error) {
	if ns.HistorySize == 0 {
		return nil, noHistory(id, channel, ns)
	}
	if limit <= 0 || limit > HistoryLimit {
		limit = HistoryLimit
	}
	ctx, cancel := context.WithTimeout(ctx, h.cfg.OpTimeout)
	defer cancel()
	hist, err := h.client.History(ctx, channel, fanout.HistoryOptions{Since: since, Limit: limit, Reverse: reverse})
	if err != nil {
		return nil, h.historyError(id, channel, err)
	}
	h.metrics.historyRequests.WithLabelValues(transport).Inc()
	return hist, nil
}

// historyError is the reply to a failed history read or resume.
func (h *Handler) historyError(id json.RawMessage, channel string, err error) *Error {
	switch {
	case errors.Is(err, fanout.ErrNoHistory):
		// The configuration changed between the check and the read.
		return noHistory(id, channel, h.limits().doc.For(channel))
	case errors.Is(err, fanout.ErrBadPosition):
		return badRequest(id, "since is not a position: pass the pos of a message frame, of a subscribe's ok or of a history reply, unchanged")
	}
	return &Error{Code: CodeUnavailable, Message: "history read failed: " + err.Error(), ID: id}
}

// noHistory is the error for since or history on a channel whose namespace
// keeps none; it names the namespace rule.
func noHistory(id json.RawMessage, channel string, ns clusterconfig.Namespace) *Error {
	return &Error{Code: CodeNoHistory, ID: id, Message: fmt.Sprintf(
		"%s keeps no history: its namespace %q has history_size 0 (the cluster configuration's namespaces set it)", channel, ns.Match)}
}

// appendHistory appends the fields of a history reply, without braces:
//
//	"messages":[{<message fields>},…],"pos":"…","recovered":true
//
// Each message object has the fields of a message frame (appendMessage)
// without op. If the messages pass historyReplyBytes the rest is left out;
// oldest first, pos is then that of the last message included (a client
// pages on from it), newest first it stays the read's.
func appendHistory(b []byte, channel string, hist *fanout.History, reverse bool) []byte {
	b = append(b, `"messages":[`...)
	start := len(b)
	pos := hist.Position
	for i, m := range hist.Messages {
		if i > 0 {
			if len(b)-start > historyReplyBytes {
				if !reverse {
					pos = hist.Messages[i-1].Position()
				}
				break
			}
			b = append(b, ',')
		}
		b = append(b, '{')
		b = appendMessage(b, channel, m.Payload, m.ID(), m.PublishedAt, m.Position())
		b = append(b, '}')
	}
	b = append(b, `],"pos":`...)
	b = appendString(b, pos)
	b = append(b, `,"recovered":`...)
	return strconv.AppendBool(b, hist.Recovered)
}

// anonymousSubscribe reports whether a client without a credential may
// subscribe to channel (and so read its history).
func (l *limits) anonymousSubscribe(channel string) bool {
	return l.anonymous && l.doc.For(channel).AllowSubscribe == clusterconfig.AccessAnonymous
}
