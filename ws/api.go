package ws

import (
	"context"
	"encoding/json"
	"errors"
	"github.com/pubmesh/pubmesh/clusterconfig"
	"io"
	"net/http"
	"time"
)

// publish sends data (valid, compact JSON) through the fanout client.
func (h *Handler) publish(ctx context.Context, id json.RawMessage, channel string, data []byte, source string) *Error {
	ctx, cancel := context.WithTimeout(ctx, h.cfg.OpTimeout)
	defer cancel()
	if err := h.client.Publish(ctx, channel, data); err != nil {
		return &Error{Code: CodeUnavailable, Message: "publish failed: " + err.Error(), ID: id}
	}
	h.metrics.messagesIn.WithLabelValues(source).Inc()
	return nil
}

// httpAccess authenticates an HTTP request on the channel in its path and
// authorizes op there (a credential-less request only where the
// namespace allows anonymous clients for op), answering the request itself
// when it is refused.
func (h *Handler) httpAccess(w http.ResponseWriter, r *http.Request, op string) (*limits, *Principal, clusterconfig.Namespace, string, bool) {
	l := h.limits()
	channel := r.PathValue("channel")
	anonymous := l.anonymousPublish(channel)
	if op == OpSubscribe {
		anonymous = l.anonymousSubscribe(channel)
	}
	p, err := h.authenticate(r, anonymous, "http")
	if err != nil {
		h.refuse(w, err)
		return nil, nil, clusterconfig.Namespace{}, "", false
	}
	ns, e := h.authorize(l, nil, p, op, channel)
	if e != nil {
		h.httpError(w, e)
		return nil, nil, clusterconfig.Namespace{}, "", false
	}
	return l, p, ns, channel, true
}

// servePublish is POST /api/publish/{channel}: the body is the data.
// Without a credential it is accepted only for a channel whose namespace
// allows anonymous publishes (otherwise 401, as without such a namespace).
func (h *Handler) servePublish(w http.ResponseWriter, r *http.Request) {
	l, p, ns, channel, ok := h.httpAccess(w, r, OpPublish)
	if !ok {
		return
	}
	if e := h.allowPublish(l, nil, p, nil, clientAddr(r)); e != nil {
		w.Header().Set("Retry-After", "1")
		h.httpError(w, e)
		return
	}
	max := l.maxPublishBytes(ns)
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, int64(max)))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			h.httpError(w, &Error{Code: CodeTooLarge, Message: "body larger than " + byteSize(max)})
		} else {
			h.httpError(w, badRequest(nil, "read body: %v", err))
		}
		return
	}
	data, e := h.checkData(nil, body, max)
	if e == nil {
		e = h.publish(r.Context(), nil, channel, data, "http")
	}
	if e != nil {
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
