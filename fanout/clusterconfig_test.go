package fanout_test

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pubmesh/pubmesh/clusterconfig"
	"github.com/pubmesh/pubmesh/discovery"
	"github.com/pubmesh/pubmesh/fanout"
)

// The client follows the cluster configuration: ClusterConfig, the gauge
// and its registration in etcd (what pubmesh clients shows) all move to a
// new revision within a second, and a bad revision is ignored and counted.
func TestClientFollowsClusterConfig(t *testing.T) {
	e := newEnv(t)
	e.node("n1", discovery.StateReady)
	ctx := context.Background()
	tree, _ := clusterconfig.Decode([]byte("gateway: {max_subscriptions: 7}"))
	rev1, err := e.reg.PutConfig(ctx, tree, 0, discovery.ConfigChange{Author: "test"})
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	c := e.client(fanout.Config{Registerer: reg, Role: "gateway"})
	if got := c.ClusterConfig(); got.Revision != rev1 || got.Doc.Gateway.MaxSubscriptions != 7 {
		t.Fatalf("at start: %+v", got)
	}
	registered := func() discovery.ClientInfo {
		clients, err := e.reg.Clients(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, ci := range clients {
			if ci.ID == c.ID() {
				return ci
			}
		}
		t.Fatalf("client %s not registered", c.ID())
		return discovery.ClientInfo{}
	}
	if ci := registered(); ci.ConfigRevision != rev1 || ci.Role != "gateway" {
		t.Fatalf("registration at start: %+v", ci)
	}

	tree, _ = clusterconfig.Decode([]byte("gateway: {max_subscriptions: 9}"))
	start := time.Now()
	rev2, err := e.reg.PutConfig(ctx, tree, rev1, discovery.ConfigChange{Author: "test"})
	if err != nil {
		t.Fatal(err)
	}
	for c.ClusterConfig().Revision != rev2 || registered().ConfigRevision != rev2 {
		if time.Since(start) > time.Second {
			t.Fatalf("revision %d not applied within 1s: %+v, registered %+v", rev2, c.ClusterConfig(), registered())
		}
		time.Sleep(5 * time.Millisecond)
	}
	if c.ClusterConfig().Doc.Gateway.MaxSubscriptions != 9 {
		t.Errorf("max_subscriptions = %d", c.ClusterConfig().Doc.Gateway.MaxSubscriptions)
	}
	if v := metricValue(t, reg, "pubmesh_config_revision"); v != float64(rev2) {
		t.Errorf("pubmesh_config_revision = %v, want %d", v, rev2)
	}

	if _, err := e.cli.Put(ctx, "/pubmesh/"+e.cluster+"/config", "gateway: [not, a, mapping]"); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(time.Second)
	for metricValue(t, reg, "pubmesh_config_invalid_total") != 1 {
		if time.Now().After(deadline) {
			t.Fatal("the bad revision was not counted within 1s")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if got := c.ClusterConfig(); got.Revision != rev2 {
		t.Errorf("after a bad revision the client runs %d, want %d (the last good one)", got.Revision, rev2)
	}
}
