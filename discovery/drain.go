package discovery

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// DrainRequestTTL bounds how long a drain request waits for an agent that
// never picks it up, so a request for a dead node does not linger.
const DrainRequestTTL = 10 * time.Minute

type drainRequest struct {
	RequestedAt time.Time `json:"requested_at"`
	By          string    `json:"by,omitempty"`
}

// RequestDrain asks node id's agent to drain and leave. It fails if no live
// node has that id.
func (r *Registry) RequestDrain(ctx context.Context, id, by string) error {
	if err := ValidID(id); err != nil {
		return err
	}
	lease, err := r.cli.Grant(ctx, int64(DrainRequestTTL/time.Second))
	if err != nil {
		return fmt.Errorf("discovery: drain %s: %w", id, err)
	}
	val, _ := json.Marshal(drainRequest{RequestedAt: time.Now().UTC(), By: by})
	txn, err := r.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(r.keys.node(id)), ">", 0)).
		Then(clientv3.OpPut(r.keys.drain(id), string(val), clientv3.WithLease(lease.ID))).
		Commit()
	if err != nil {
		return fmt.Errorf("discovery: drain %s: %w", id, err)
	}
	if !txn.Succeeded {
		r.cli.Revoke(ctx, lease.ID)
		return fmt.Errorf("discovery: drain %s: no live node with that id", id)
	}
	return nil
}

// DrainRequested returns a channel that is closed once a drain of node id
// is requested (also if the request was made before the call). It retries
// through etcd outages until ctx is done.
func (r *Registry) DrainRequested(ctx context.Context, id string) <-chan struct{} {
	ch := make(chan struct{})
	go func() {
		key := r.keys.drain(id)
		for ctx.Err() == nil {
			resp, err := r.cli.Get(ctx, key)
			if err != nil {
				sleep(ctx, time.Second)
				continue
			}
			if len(resp.Kvs) > 0 {
				close(ch)
				return
			}
			wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
			for wr := range r.cli.Watch(wctx, key, clientv3.WithRev(resp.Header.Revision+1)) {
				if wr.Err() != nil {
					break
				}
				for _, ev := range wr.Events {
					if ev.Type == clientv3.EventTypePut {
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

// ClearDrain deletes node id's drain request, once the node has left.
func (r *Registry) ClearDrain(ctx context.Context, id string) error {
	if _, err := r.cli.Delete(ctx, r.keys.drain(id)); err != nil {
		return fmt.Errorf("discovery: clear drain %s: %w", id, err)
	}
	return nil
}
