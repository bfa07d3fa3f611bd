package discovery

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// ClientInfo is the value at <prefix>/<cluster>/clients/<id>: a fanout client
// that node agents wait for during joins and drains.
type ClientInfo struct {
	ID        string    `json:"id"`
	Host      string    `json:"host,omitempty"`
	PID       int       `json:"pid,omitempty"`
	StartedAt time.Time `json:"started_at"`
	Version   string    `json:"version"`
	// Role says what embeds the client: "gateway", or what the service set
	// in fanout.Config.Role. Default: empty.
	Role string `json:"role,omitempty"`
	// ConfigRevision is the cluster configuration revision the client runs
	// (0: the defaults), kept current while it runs.
	ConfigRevision int64 `json:"config_revision"`
}

// AckState is what a client acknowledges about a node.
type AckState string

const (
	// AckSubscribed: the client's subscriptions are confirmed on the node
	// (every SUBSCRIBE answered), so the node may take publishes.
	AckSubscribed AckState = "subscribed"
	// AckReleased: the client no longer publishes to the node and has no
	// publish in flight there, so the node may leave once Redis has flushed
	// its output buffers.
	AckReleased AckState = "released"
)

// Ack is the value at <prefix>/<cluster>/acks/<node-id>/<client-id>.
type Ack struct {
	// RunID of the node the ack is about: an ack for an earlier run of a
	// restarted node does not count.
	RunID string `json:"run_id"`
	// Incarnation of the node's registration the ack is about (see
	// Node.Incarnation).
	Incarnation int64     `json:"incarnation"`
	State       AckState  `json:"state"`
	At          time.Time `json:"at"`
}

// ErrClientIDTaken is how RegisterClient fails when a live client already
// holds the id: two clients must never share one key, or the first to leave
// would delete the other's presence and acks.
var ErrClientIDTaken = errors.New("discovery: a live client already has this id")

// ClientRegistration is a fanout client's presence under its lease. Its acks
// are written under the same lease, so they vanish with the client.
type ClientRegistration struct {
	*leasedValue[ClientInfo]
	r  *Registry
	id string
}

// RegisterClient announces a fanout client. From then on, joins and drains
// of nodes wait for its acks (up to their timeout). The key is created only
// if no live client holds the id; otherwise it fails with ErrClientIDTaken
// (wrapped) and leaves the other client's key alone.
func (r *Registry) RegisterClient(ctx context.Context, info ClientInfo, ttl time.Duration) (*ClientRegistration, error) {
	if err := ValidID(info.ID); err != nil {
		return nil, err
	}
	l, err := createLeased(ctx, r.cli, r.cfg.Logger, r.keys.client(info.ID), "client "+info.ID, info, ttl, ErrClientIDTaken)
	if err != nil {
		return nil, err
	}
	return &ClientRegistration{leasedValue: l, r: r, id: info.ID}, nil
}

// Update changes the client's value with fn and writes it under the same
// lease, only while the key still belongs to this lease.
func (c *ClientRegistration) Update(ctx context.Context, fn func(*ClientInfo)) error {
	return c.update(ctx, fn, func(i *ClientInfo) { i.ID = c.id })
}

// Info returns the client's value as last written.
func (c *ClientRegistration) Info() ClientInfo { return c.value() }

// Ack records what the client confirms about node nodeID.
func (c *ClientRegistration) Ack(ctx context.Context, nodeID string, a Ack) error {
	if a.At.IsZero() {
		a.At = time.Now().UTC()
	}
	val, _ := json.Marshal(a)
	if _, err := c.r.cli.Put(ctx, c.r.keys.ack(nodeID, c.id), string(val), clientv3.WithLease(c.ID())); err != nil {
		return fmt.Errorf("discovery: ack %s %s: %w", nodeID, a.State, err)
	}
	return nil
}

// Clients lists the registered fanout clients.
func (r *Registry) Clients(ctx context.Context) ([]ClientInfo, error) {
	resp, err := r.cli.Get(ctx, r.keys.clients(), clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("discovery: list clients: %w", err)
	}
	out := make([]ClientInfo, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		var ci ClientInfo
		if json.Unmarshal(kv.Value, &ci) != nil {
			ci.ID = strings.TrimPrefix(string(kv.Key), r.keys.clients())
		}
		out = append(out, ci)
	}
	return out, nil
}

// PendingAcks returns the ids of registered clients that have not yet
// acknowledged state want for this registration of node (same RunID and
// Incarnation).
func (r *Registry) PendingAcks(ctx context.Context, node Node, want AckState) ([]string, error) {
	resp, err := r.cli.Txn(ctx).Then(
		clientv3.OpGet(r.keys.clients(), clientv3.WithPrefix(), clientv3.WithKeysOnly()),
		clientv3.OpGet(r.keys.acks(node.ID), clientv3.WithPrefix()),
	).Commit()
	if err != nil {
		return nil, fmt.Errorf("discovery: acks for %s: %w", node.ID, err)
	}
	acked := map[string]bool{}
	for _, kv := range resp.Responses[1].GetResponseRange().Kvs {
		var a Ack
		if json.Unmarshal(kv.Value, &a) == nil && a.RunID == node.RunID && a.Incarnation == node.Incarnation && a.State == want {
			acked[strings.TrimPrefix(string(kv.Key), r.keys.acks(node.ID))] = true
		}
	}
	var pending []string
	for _, kv := range resp.Responses[0].GetResponseRange().Kvs {
		id := strings.TrimPrefix(string(kv.Key), r.keys.clients())
		if !acked[id] {
			pending = append(pending, id)
		}
	}
	sort.Strings(pending)
	return pending, nil
}

// WaitAcks blocks until every registered client has acknowledged state want
// for this run of node. Clients that register meanwhile are waited for
// too; clients that vanish are not. When ctx ends first it returns the
// clients still pending with the context's error, so the caller can log who
// did not answer.
func (r *Registry) WaitAcks(ctx context.Context, node Node, want AckState) ([]string, error) {
	var known []string // pending as last read, for the caller's log
	// One pair of watches serves the whole wait, set up before the first
	// read: each change to the clients or to this node's acks triggers a
	// read. A watch set up after a read, from the read's revision, would
	// start behind etcd when acks came in between (they come within
	// milliseconds of the node's registration), and etcd catches such
	// watches up only every 100 ms: a join took 70-100 ms longer than its
	// acks. A watch that ends is made again.
	var cw, aw clientv3.WatchChan
	stop := func() {}
	defer func() { stop() }()
	for {
		if cw == nil {
			wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
			stop = cancel
			cw = r.cli.Watch(wctx, r.keys.clients(), clientv3.WithPrefix(), clientv3.WithCreatedNotify())
			aw = r.cli.Watch(wctx, r.keys.acks(node.ID), clientv3.WithPrefix(), clientv3.WithCreatedNotify())
			if !watchesCreated(ctx, cw, aw) {
				stop()
				cw, aw = nil, nil
			}
		}
		pending, err := r.PendingAcks(ctx, node, want)
		if err == nil && len(pending) == 0 {
			return nil, nil
		}
		if err == nil {
			known = pending
		}
		if ctx.Err() != nil {
			return known, ctx.Err()
		}
		if err != nil || cw == nil {
			sleep(ctx, 200*time.Millisecond)
			continue
		}
		var wr clientv3.WatchResponse
		ok := true
		select {
		case wr, ok = <-cw:
		case wr, ok = <-aw:
		case <-ctx.Done():
		case <-time.After(2 * time.Second): // a stalled watch must not stall the wait
		}
		if !ok || wr.Err() != nil {
			stop()
			cw, aw = nil, nil
		}
	}
}

// watchesCreated waits for the created notice of each watch (so that a
// read after it misses no change), up to 2 seconds.
func watchesCreated(ctx context.Context, ws ...clientv3.WatchChan) bool {
	t := time.NewTimer(2 * time.Second)
	defer t.Stop()
	for _, w := range ws {
		select {
		case wr, ok := <-w:
			if !ok || wr.Err() != nil || !wr.Created {
				return false
			}
		case <-ctx.Done():
			return false
		case <-t.C:
			return false
		}
	}
	return true
}

// ClearAcks deletes every ack about node id once the node has left: the
// node agent calls it when it stops for good. Acks live under the clients'
// leases, so without it a long-lived client would keep one ack per node id it
// ever saw. It does nothing while a node holds the id (checked in the same
// transaction), since the acks may then be for that node's registration.
func (r *Registry) ClearAcks(ctx context.Context, id string) error {
	if err := ValidID(id); err != nil {
		return err
	}
	_, err := r.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(r.keys.node(id)), "=", 0)).
		Then(clientv3.OpDelete(r.keys.acks(id), clientv3.WithPrefix())).
		Commit()
	if err != nil {
		return fmt.Errorf("discovery: clear acks %s: %w", id, err)
	}
	return nil
}
