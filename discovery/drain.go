package discovery

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// DrainRequestTTL bounds how long a drain request waits for an agent that
// never picks it up, so a request for a dead node does not linger.
const DrainRequestTTL = 10 * time.Minute

// DrainRequest is the value at drain/<node-id>.
type DrainRequest struct {
	RequestedAt time.Time `json:"requested_at"`
	By          string    `json:"by,omitempty"`
	// Incarnation of the node registration the request is for (see
	// Node.Incarnation): the agent of a later registration of the same id
	// ignores it, so a request left over from an earlier agent never drains
	// a new one. In a request written by an older pubmesh it is 0, and the
	// key's ModRevision stands in for it.
	Incarnation int64 `json:"incarnation,omitempty"`
}

// ErrNoSuchNode is how RequestDrain fails when no live node has the id.
var ErrNoSuchNode = errors.New("no live node with that id")

// RequestDrain asks node id's agent to drain and leave. The request is for
// the node's current registration (its incarnation). It fails if no live
// node has that id.
func (r *Registry) RequestDrain(ctx context.Context, id, by string) error {
	if err := ValidID(id); err != nil {
		return err
	}
	lease, err := r.cli.Grant(ctx, int64(DrainRequestTTL/time.Second))
	if err != nil {
		return fmt.Errorf("discovery: drain %s: %w", id, err)
	}
	nodeKey := r.keys.node(id)
	// The incarnation is read, then the request written only if the node
	// still has it; a node that registered again in between is read again.
	for range 3 {
		resp, err := r.cli.Get(ctx, nodeKey)
		if err != nil {
			r.cli.Revoke(ctx, lease.ID)
			return fmt.Errorf("discovery: drain %s: %w", id, err)
		}
		if len(resp.Kvs) == 0 {
			break
		}
		inc := resp.Kvs[0].CreateRevision
		val, _ := json.Marshal(DrainRequest{RequestedAt: time.Now().UTC(), By: by, Incarnation: inc})
		txn, err := r.cli.Txn(ctx).
			If(clientv3.Compare(clientv3.CreateRevision(nodeKey), "=", inc)).
			Then(clientv3.OpPut(r.keys.drain(id), string(val), clientv3.WithLease(lease.ID))).
			Commit()
		if err != nil {
			r.cli.Revoke(ctx, lease.ID)
			return fmt.Errorf("discovery: drain %s: %w", id, err)
		}
		if txn.Succeeded {
			return nil
		}
	}
	r.cli.Revoke(ctx, lease.ID)
	return fmt.Errorf("discovery: drain %s: %w", id, ErrNoSuchNode)
}

// DrainRequested returns a channel that is closed once a drain of node id
// is requested for registration incarnation or a later one (also if the
// request was made before the call). A request for an earlier registration
// of the id, left by an agent that stopped before it could act on it, is
// ignored. It retries through etcd outages until ctx is done.
func (r *Registry) DrainRequested(ctx context.Context, id string, incarnation int64) <-chan struct{} {
	ch := make(chan struct{})
	go func() {
		key := r.keys.drain(id)
		for ctx.Err() == nil {
			resp, err := r.cli.Get(ctx, key)
			if err != nil {
				sleep(ctx, time.Second)
				continue
			}
			if len(resp.Kvs) > 0 && drainFor(resp.Kvs[0], incarnation) {
				close(ch)
				return
			}
			wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
			for wr := range r.cli.Watch(wctx, key, clientv3.WithRev(resp.Header.Revision+1)) {
				if wr.Err() != nil {
					break
				}
				for _, ev := range wr.Events {
					if ev.Type == clientv3.EventTypePut && drainFor(ev.Kv, incarnation) {
						cancel()
						close(ch)
						return
					}
				}
			}
			cancel()
			sleep(ctx, time.Second)
		}
	}()
	return ch
}

// drainFor reports whether the drain request kv is for registration
// incarnation or a later one.
func drainFor(kv *mvccpb.KeyValue, incarnation int64) bool {
	var req DrainRequest
	json.Unmarshal(kv.Value, &req) // a bad value has no incarnation: the revision decides
	if req.Incarnation == 0 {
		req.Incarnation = kv.ModRevision
	}
	return req.Incarnation >= incarnation
}

// ClearDrain deletes node id's drain request, once the node has left.
func (r *Registry) ClearDrain(ctx context.Context, id string) error {
	if _, err := r.cli.Delete(ctx, r.keys.drain(id)); err != nil {
		return fmt.Errorf("discovery: clear drain %s: %w", id, err)
	}
	return nil
}
