package ws

import (
	"net/http"

	"github.com/pubmesh/pubmesh/fanout"
)

// healthBody is the JSON of GET /healthz.
type healthBody struct {
	// Status is "ok", "shutting down", "membership stale" or "no working
	// node".
	Status string `json:"status"`
	// ReadyNodes counts the ready nodes this gateway is subscribed on and
	// can publish to (registry entries it cannot use do not count).
	ReadyNodes int `json:"ready_nodes"`
	fanout.Health
}

// serveHealth is GET /healthz: 200 while the gateway is not shutting down,
// its membership is not stale (fanout.Gap), and at least one ready node
// has its subscriptions confirmed and takes its publishes; 503 otherwise.
// The body says why, per node (fanout.Health): a load balancer then keeps
// traffic off a gateway whose subscriptions do not work, whatever etcd
// lists.
func (h *Handler) serveHealth(w http.ResponseWriter, r *http.Request) {
	fh := h.client.Health()
	body := healthBody{Status: "ok", Health: fh}
	for _, n := range fh.Nodes {
		if n.Publishable {
			body.ReadyNodes++
		}
	}
	h.mu.Lock()
	down := h.shutdown
	h.mu.Unlock()
	code := http.StatusOK
	switch {
	case down:
		body.Status, code = "shutting down", http.StatusServiceUnavailable
	case fh.Stale:
		body.Status, code = "membership stale", http.StatusServiceUnavailable
	case !fh.OK:
		body.Status, code = "no working node", http.StatusServiceUnavailable
	}
	if body.Nodes == nil {
		body.Nodes = []fanout.NodeHealth{}
	}
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, code, body)
}
