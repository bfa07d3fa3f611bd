package discovery

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Down reports let the fanout clients take a dead node out of the cluster
// before its agent's lease expires. A node whose agent died with its Redis
// (a crashed host process group, an OOM kill of both, kill -9) keeps its key
// for up to the lease TTL, while every client already sees its connections
// end and new ones refused: the port has nobody listening. Each client that
// sees that writes a report under its own lease; once DownQuorum clients
// agree, one of them deletes the node's key, for that registration only.
//
// A refused connection is a definite answer from the node's host, unlike a
// timeout (a partition, a stopped process), which is left to the agent's
// health checks and the lease. A node removed wrongly (a firewall that
// rejects one client) loses nothing: its agent registers it again at once,
// as after a key deleted by hand; the quorum of two makes even that need
// two clients to agree.

// DownReport is the value at down/<node-id>/<incarnation>/<client-id>.
type DownReport struct {
	At     time.Time `json:"at"`
	Reason string    `json:"reason,omitempty"`
}

// DownQuorum is how many clients' reports remove a node: two, or every
// registered client when fewer are registered.
const DownQuorum = 2

// ReportDown records, under lease (the reporting client's), that client
// cannot reach this registration of node, and returns how many clients
// have reported it and how many clients are registered. It writes nothing
// if the node's key no longer has this incarnation.
func (r *Registry) ReportDown(ctx context.Context, node Node, client string, lease clientv3.LeaseID, reason string) (reports, clients int64, err error) {
	if err := ValidID(client); err != nil {
		return 0, 0, err
	}
	val, _ := json.Marshal(DownReport{At: time.Now().UTC(), Reason: reason})
	nodeKey := r.keys.node(node.ID)
	resp, err := r.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(nodeKey), "=", node.Incarnation)).
		Then(
			clientv3.OpPut(r.keys.down(node.ID, node.Incarnation, client), string(val), clientv3.WithLease(lease)),
			clientv3.OpGet(r.keys.downs(node.ID, node.Incarnation), clientv3.WithPrefix(), clientv3.WithCountOnly()),
			clientv3.OpGet(r.keys.clients(), clientv3.WithPrefix(), clientv3.WithCountOnly()),
		).
		Commit()
	if err != nil {
		return 0, 0, fmt.Errorf("discovery: report node %s down: %w", node.ID, err)
	}
	if !resp.Succeeded {
		return 0, 0, nil
	}
	return resp.Responses[1].GetResponseRange().Count, resp.Responses[2].GetResponseRange().Count, nil
}

// RemoveDown deletes this registration of node (and its down reports), if
// its key still has this incarnation. It reports whether it deleted it.
func (r *Registry) RemoveDown(ctx context.Context, node Node) (bool, error) {
	nodeKey := r.keys.node(node.ID)
	resp, err := r.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(nodeKey), "=", node.Incarnation)).
		Then(
			clientv3.OpDelete(nodeKey),
			clientv3.OpDelete(r.keys.downs(node.ID, node.Incarnation), clientv3.WithPrefix()),
		).
		Commit()
	if err != nil {
		return false, fmt.Errorf("discovery: remove node %s: %w", node.ID, err)
	}
	return resp.Succeeded, nil
}

// WithdrawDown deletes client's report about this registration of node (the
// node answered again, or it left anyway).
func (r *Registry) WithdrawDown(ctx context.Context, node Node, client string) error {
	if _, err := r.cli.Delete(ctx, r.keys.down(node.ID, node.Incarnation, client)); err != nil {
		return fmt.Errorf("discovery: withdraw down report on %s: %w", node.ID, err)
	}
	return nil
}
