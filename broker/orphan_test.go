package broker_test

import (
	"context"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/pubmesh/pubmesh/discovery"
)

// A node key deleted by hand (etcdctl del) while the agent's lease lives:
// the agent notices, says so, and registers again with a new incarnation.
func TestAgentRegistersAgainWhenItsKeyIsDeleted(t *testing.T) {
	t.Parallel()
	reg := newRegistry(t)
	w := watch(t, reg)
	cfg := fastConfig(t, reg)
	var logs *syncBuffer
	cfg.Logger, logs = testLogs(t)
	start(t, cfg)
	w.until(t, 15*time.Second, "ready", inState(cfg.ID, discovery.StateReady))
	n, _ := node(w.last, cfg.ID)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	before, err := reg.Client().Get(ctx, reg.NodeKey(cfg.ID))
	if err != nil || len(before.Kvs) != 1 {
		t.Fatalf("node key: %v %v", before, err)
	}
	old := clientv3.LeaseID(before.Kvs[0].Lease)
	if resp, err := reg.Client().Delete(ctx, reg.NodeKey(cfg.ID)); err != nil || resp.Deleted != 1 {
		t.Fatalf("delete the node key: %v %v", resp, err)
	}
	took := w.until(t, 20*time.Second, "ready again, registered anew", func(s discovery.Snapshot) bool {
		m, ok := node(s, cfg.ID)
		return ok && m.Incarnation != n.Incarnation && m.State == discovery.StateReady
	})
	t.Logf("ready again %s after the key was deleted", took)
	if !strings.Contains(logs.String(), "node key deleted") {
		t.Error("the agent did not log that its key was deleted")
	}
	// The old lease is revoked, not kept alive with no key.
	ttl, err := reg.Client().TimeToLive(ctx, old)
	if err != nil {
		t.Fatal(err)
	}
	if ttl.TTL != -1 {
		t.Errorf("the old lease still lives (TTL %ds) with no key", ttl.TTL)
	}
}
