package fanout

import (
	"sort"
	"time"

	"github.com/pubmesh/pubmesh/discovery"
)

// Health is what the client can do now, node by node: not what etcd
// says, but whether this client is subscribed on each node and can
// publish there. A registry entry whose address points nowhere is listed,
// and counts for nothing.
type Health struct {
	// OK is true when at least one ready node is Subscribed and
	// Publishable and membership is not Stale: the client delivers and
	// publishes.
	OK bool `json:"ok"`
	// Stale is true while a Gap is open: the client may be missing nodes
	// that joined while it was cut off from etcd. StaleSince and
	// StaleReason say since when and why.
	Stale       bool      `json:"stale"`
	StaleSince  time.Time `json:"stale_since,omitzero"`
	StaleReason string    `json:"stale_reason,omitempty"`
	// Nodes are the registered nodes, by id.
	Nodes []NodeHealth `json:"nodes"`
}

// NodeHealth is one registered node as this client sees it.
type NodeHealth struct {
	ID    string          `json:"id"`
	Addr  string          `json:"addr"`
	State discovery.State `json:"state"`
	// Subscribed is true while the client's subscription connection to
	// the node is up and the node confirmed every channel and pattern of
	// the client (the last check, at most 5 s old when idle, came back).
	Subscribed bool `json:"subscribed"`
	// Publishable is true when the node is ready, answers (Subscribed) and
	// its last publish from this client, if any, succeeded or failed more
	// than SuspectFor ago.
	Publishable bool `json:"publishable"`
	// Error is the latest failure on the node's connections, while the
	// node is not Subscribed or not Publishable.
	Error string `json:"error,omitempty"`
}

// Health reports, per registered node, whether the client is subscribed
// there and can publish there, and whether membership is stale. It is
// cheap (no network call): the state is kept up to date by each node's
// connections.
func (c *Client) Health() Health {
	var h Health
	h.Stale, h.StaleSince, h.StaleReason = c.staleSince()
	for _, nc := range c.conns() {
		n := NodeHealth{ID: nc.node.ID, Addr: nc.node.Addr, State: nc.getState(), Subscribed: nc.subUp.Load()}
		// A failed publish counts only while the node is suspect
		// (SuspectFor): after that the node is tried again, and a client
		// that seldom publishes must not stay unhealthy until it does.
		n.Publishable = n.State == discovery.StateReady && n.Subscribed && (nc.pubOK.Load() || !nc.suspect())
		if !n.Subscribed || !n.Publishable {
			if ne := nc.refusedErr.Load(); ne != nil && !n.Subscribed {
				n.Error = ne.Error()
			} else if e := nc.lastErr.Load(); e != nil {
				n.Error = e.err.Error()
			} else if !n.Subscribed {
				n.Error = "subscriptions not confirmed yet"
			}
		}
		if n.Publishable {
			h.OK = true
		}
		h.Nodes = append(h.Nodes, n)
	}
	if h.Stale {
		h.OK = false
	}
	sort.Slice(h.Nodes, func(i, j int) bool { return h.Nodes[i].ID < h.Nodes[j].ID })
	return h
}
