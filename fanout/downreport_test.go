package fanout_test

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/pubmesh/pubmesh/discovery"
	"github.com/pubmesh/pubmesh/fanout"
)

// A node whose Redis is gone while its key lives on (its agent died with
// it, or has not noticed yet): the clients see its connections refused and
// remove it once discovery.DownQuorum of them agree, long before the lease
// would expire; with fewer reports than the quorum the key stays.
func TestRefusedNodeRemovedByClients(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name        string
		clients     int  // fanout clients that see the node
		idleClients int  // clients registered in etcd that report nothing
		removed     bool // the key goes before the lease
	}{
		{name: "two clients agree", clients: 2, removed: true},
		{name: "the only client", clients: 1, removed: true},
		{name: "one of two clients reports", clients: 1, idleClients: 1, removed: false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			victim, _ := e.node("n1", discovery.StateReady)
			e.node("n2", discovery.StateReady)
			for i := range tc.idleClients {
				p, err := e.reg.RegisterClient(context.Background(), discovery.ClientInfo{ID: "idle-" + string(rune('a'+i))}, 30*time.Second)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { p.Close(context.Background()) })
			}
			var clients []*fanout.Client
			var regs []*prometheus.Registry
			var subs []*fanout.Subscription
			for range tc.clients {
				reg := prometheus.NewRegistry()
				c := e.client(fanout.Config{Registerer: reg, Logger: quietLog()})
				waitFor(t, 10*time.Second, "2 ready nodes", func() bool { return len(c.Nodes().Ready()) == 2 })
				s, err := c.Subscribe(context.Background(), "ch")
				if err != nil {
					t.Fatal(err)
				}
				clients, regs, subs = append(clients, c), append(regs, reg), append(subs, s)
			}
			inc := incarnation(t, e, "n1")

			victim.Kill()
			t0 := time.Now()
			gone := func() bool { return incarnation(t, e, "n1") == 0 }
			if tc.removed {
				waitFor(t, 5*time.Second, "n1's key deleted", gone)
				t.Logf("n1's key deleted %s after its Redis was killed (lease TTL 5s, renewed by the test)", time.Since(t0).Round(time.Millisecond))
				removals := 0.0
				for _, r := range regs {
					removals += metricValue(t, r, "pubmesh_fanout_down_removals_total")
				}
				if removals != 1 {
					t.Errorf("down removals over all clients = %v, want 1", removals)
				}
				// What is published now reaches every subscriber through n2.
				if err := clients[0].Publish(context.Background(), "ch", []byte("after")); err != nil {
					t.Fatal(err)
				}
				for _, s := range subs {
					if m := recv(t, s, 1, 5*time.Second)[0]; string(m.Payload) != "after" || m.Node != "n2" {
						t.Errorf("got %q from %s, want \"after\" from n2", m.Payload, m.Node)
					}
				}
				return
			}
			waitFor(t, 5*time.Second, "a down report", func() bool {
				return metricValue(t, regs[0], "pubmesh_fanout_down_reports_total") == 1
			})
			time.Sleep(time.Second)
			if got := incarnation(t, e, "n1"); got != inc {
				t.Fatalf("n1's incarnation %d, want %d: one report of two removed the node", got, inc)
			}
		})
	}
}

// incarnation is the create revision of node id's key, 0 when it has none.
func incarnation(t *testing.T, e *env, id string) int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := e.cli.Get(ctx, e.reg.NodeKey(id), clientv3.WithKeysOnly())
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) == 0 {
		return 0
	}
	return resp.Kvs[0].CreateRevision
}

// waitFor polls cond every 10 ms until it holds, failing t after within.
func waitFor(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("no %s within %s", what, within)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
