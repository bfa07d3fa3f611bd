package ws

import (
	"encoding/json"
	"io"
	"net/http"
	"time"
)

// httpAuthenticate authenticates an HTTP request on the channel in its
// path, for op: a request without a credential is let in (as the
// anonymous principal) only where the channel's namespace allows anonymous
// clients for op. It answers the request itself when it is refused; the
// op (ops.go) then authorizes the principal.
func (h *Handler) httpAuthenticate(w http.ResponseWriter, r *http.Request, op string) (*Principal, string, bool) {
	l := h.limits()
	channel := r.PathValue("channel")
	anonymous := l.anonymousPublish(channel)
	if op == OpSubscribe {
		anonymous = l.anonymousSubscribe(channel)
	}
	p, err := h.authenticate(r, anonymous, "http")
	if err != nil {
		h.refuse(w, err)
		return nil, "", false
	}
	return p, channel, true
}

// servePublish is POST /api/publish/{channel}: the body is the data.
// Without a credential it is accepted only for a channel whose namespace
// allows anonymous publishes (otherwise 401, as without such a namespace).
// The body is read up to one byte past the namespace's limit, so that
// publishOp refuses a larger one (413) after the channel and the access.
func (h *Handler) servePublish(w http.ResponseWriter, r *http.Request) {
	p, channel, ok := h.httpAuthenticate(w, r, OpPublish)
	if !ok {
		return
	}
	l := h.limits()
	max := l.maxPublishBytes(l.doc.For(channel))
	body, err := io.ReadAll(io.LimitReader(r.Body, int64(max)+1))
	if err != nil {
		h.httpError(w, badRequest(nil, "read body: %v", err))
		return
	}
	e := h.publishOp(h.traceContext(r), publishRequest{p: p, addr: clientAddr(r), channel: channel, data: body, source: "http"})
	if e != nil {
		if e.Code == CodeRateLimited {
			w.Header().Set("Retry-After", "1")
		}
		h.httpError(w, e)
		return
	}
	writeJSON(w, http.StatusOK, map[string]bool{"ok": true})
}

// NodeInfo is one node in GET /api/nodes.
type NodeInfo struct {
	ID           string    `json:"id"`
	Addr         string    `json:"addr"`
	State        string    `json:"state"`
	StartedAt    time.Time `json:"started_at"`
	Version      string    `json:"version,omitempty"`
	RedisVersion string    `json:"redis_version,omitempty"`
}

// NodesResponse is the body of GET /api/nodes.
type NodesResponse struct {
	Nodes []NodeInfo `json:"nodes"`
	Ready int        `json:"ready"`
	// Stale is true while the gateway cannot read etcd: the list is the
	// last one known.
	Stale bool `json:"stale"`
	// Channels is how many channels the gateway holds a fanout
	// subscription for.
	Channels int `json:"channels"`
}

// serveNodes is GET /api/nodes; any valid credential may read it.
func (h *Handler) serveNodes(w http.ResponseWriter, r *http.Request) {
	if _, err := h.auth.authenticate(r); err != nil {
		h.refuse(w, err)
		return
	}
	s := h.client.Nodes()
	resp := NodesResponse{Nodes: []NodeInfo{}, Ready: len(s.Ready()), Stale: s.Stale, Channels: h.hub.channelCount()}
	for _, n := range s.Nodes {
		resp.Nodes = append(resp.Nodes, NodeInfo{ID: n.ID, Addr: n.Addr, State: string(n.State),
			StartedAt: n.StartedAt, Version: n.Version, RedisVersion: n.RedisVersion})
	}
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, http.StatusOK, resp)
}

var httpStatus = map[string]int{
	CodeBadRequest:   http.StatusBadRequest,
	CodeForbidden:    http.StatusForbidden,
	CodeTooLarge:     http.StatusRequestEntityTooLarge,
	CodeRateLimited:  http.StatusTooManyRequests,
	CodeLimit:        http.StatusTooManyRequests,
	CodeUnavailable:  http.StatusServiceUnavailable,
	CodeUnauthorized: http.StatusUnauthorized,
	CodeNoHistory:    http.StatusNotFound,
	CodeNoPresence:   http.StatusNotFound,
}

func (h *Handler) httpError(w http.ResponseWriter, e *Error) {
	h.metrics.errors.WithLabelValues(e.Code).Inc()
	writeError(w, httpStatus[e.Code], e)
}

// writeError writes {"code":…,"message":…}.
func writeError(w http.ResponseWriter, status int, e *Error) {
	writeJSON(w, status, map[string]string{"code": e.Code, "message": e.Message})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, _ := json.Marshal(v)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	w.Write(append(b, '\n'))
}
