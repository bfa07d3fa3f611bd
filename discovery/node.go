package discovery

import (
	"encoding/json"
	"fmt"
	"net"
	"time"
)

// State is where a node is in its life. A node that is gone has no key.
type State string

const (
	// StateJoining: the node is up and clients subscribe on it, but nobody
	// publishes to it yet.
	StateJoining State = "joining"
	// StateReady: the node takes publishes and is subscribed everywhere.
	StateReady State = "ready"
	// StateDraining: the node is leaving; clients stop publishing to it but
	// stay subscribed until it is gone, so nothing in flight is lost.
	StateDraining State = "draining"
)

// Valid reports whether s is one of the three states.
func (s State) Valid() bool {
	return s == StateJoining || s == StateReady || s == StateDraining
}

// Node is the value stored at <prefix>/<cluster>/nodes/<id>.
type Node struct {
	ID        string    `json:"id"`
	Addr      string    `json:"addr"` // host:port clients dial
	State     State     `json:"state"`
	StartedAt time.Time `json:"started_at"`
	Version   string    `json:"version"` // pubmesh version of the agent
	// RedisVersion is what the server reports in INFO.
	RedisVersion string `json:"redis_version,omitempty"`
	// RunID is the redis-server's run_id: it changes on every restart, so
	// clients can tell a restarted node from one they already subscribed on.
	RunID string `json:"run_id,omitempty"`
	// Attached is true when the agent watches a Redis it did not start.
	Attached bool `json:"attached,omitempty"`
	// ConfigRevision is the cluster configuration revision the agent has
	// applied to its Redis (0: the defaults).
	ConfigRevision int64 `json:"config_revision,omitempty"`
	// TLS is true when clients must connect with TLS.
	TLS bool `json:"tls,omitempty"`
	// Incarnation is the etcd revision that created this registration. It
	// is not stored in the value: the registry fills it in from the key. A
	// node that leaves and registers again, even with the same Redis run,
	// gets a new one, so acks for the earlier registration do not count.
	Incarnation int64 `json:"-"`
}

// Validate checks the fields a client relies on.
func (n Node) Validate() error {
	if err := ValidID(n.ID); err != nil {
		return err
	}
	if _, _, err := net.SplitHostPort(n.Addr); err != nil || n.Addr == "" {
		return fmt.Errorf("discovery: node %s: invalid addr %q", n.ID, n.Addr)
	}
	if !n.State.Valid() {
		return fmt.Errorf("discovery: node %s: invalid state %q", n.ID, n.State)
	}
	return nil
}

// DecodeNode parses and validates a node value. The key's id must match the
// value's id, so a stray write cannot impersonate another node.
func DecodeNode(keyID string, value []byte) (Node, error) {
	var n Node
	if err := json.Unmarshal(value, &n); err != nil {
		return Node{}, fmt.Errorf("discovery: node %s: bad value: %w", keyID, err)
	}
	if n.ID != keyID {
		return Node{}, fmt.Errorf("discovery: node key %s holds id %q", keyID, n.ID)
	}
	if err := n.Validate(); err != nil {
		return Node{}, err
	}
	return n, nil
}
