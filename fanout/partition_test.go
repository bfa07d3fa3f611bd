package fanout_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pubmesh/pubmesh/discovery"
	"github.com/pubmesh/pubmesh/fanout"
	"github.com/pubmesh/pubmesh/internal/tcpproxy"
)

// TestEtcdPartitionOpensAGap: a client cut off from etcd but not from
// Redis, while a node joins and turns ready without it (its lease
// expired), tells its subscribers that messages may be missing (a Gap,
// Health.Stale, a metric) and, once etcd answers again, subscribes on the
// new node and closes the gap: then it gets every message again, from
// every node.
func TestEtcdPartitionOpensAGap(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	waitReady(t, e.agent("n1"))
	link := tcpproxy.New(t, strings.TrimPrefix(e.etcd.Endpoint(), "http://"))
	reg := prometheus.NewRegistry()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cut, err := fanout.New(ctx, fanout.Config{
		Etcd:    discovery.EtcdConfig{Endpoints: []string{"http://" + link.Addr()}, DialTimeout: 2 * time.Second},
		Cluster: e.cluster, LeaseTTL: 2 * time.Second, Registerer: reg, Logger: quietLog(),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cut.Close() })
	pub := e.client(fanout.Config{Logger: quietLog()})
	chans := make([]string, 16)
	for i := range chans {
		chans[i] = fmt.Sprintf("ch%d", i)
	}
	sub, err := cut.Subscribe(ctx, chans...)
	if err != nil {
		t.Fatal(err)
	}
	waitHealth(t, cut, "a healthy client", func(h fanout.Health) bool { return h.OK })

	link.Cut()
	var g fanout.Gap
	select {
	case g = <-sub.Gaps():
	case <-time.After(30 * time.Second):
		t.Fatal("no Gap after the client lost etcd")
	}
	if !g.End.IsZero() || g.Reason == "" || g.Start.IsZero() {
		t.Fatalf("the opening Gap: %+v", g)
	}
	if h := cut.Health(); !h.Stale || h.OK {
		t.Fatalf("health during the gap: %+v", h)
	}
	if v := metricValue(t, reg, "pubmesh_fanout_membership_stale"); v != 1 {
		t.Fatalf("pubmesh_fanout_membership_stale = %v during the gap", v)
	}
	// A node joins meanwhile: its join handshake stops waiting for the
	// client whose lease expired, it turns ready and becomes the home of
	// some channels.
	waitReady(t, e.agent("n2"))

	link.Heal()
	select {
	case g = <-sub.Gaps():
	case <-time.After(30 * time.Second):
		t.Fatal("the Gap did not end after etcd came back")
	}
	if g.End.IsZero() || g.End.Before(g.Start) {
		t.Fatalf("the closing Gap: %+v", g)
	}
	h := waitHealth(t, cut, "the client subscribed on n2 and OK", func(h fanout.Health) bool {
		n, ok := nodeHealth(h, "n2")
		return ok && n.Subscribed && h.OK && !h.Stale
	})
	t.Logf("gap: %s; health after: %+v", g, h)
	if v := metricValue(t, reg, "pubmesh_fanout_membership_gaps_total"); v != 1 {
		t.Errorf("pubmesh_fanout_membership_gaps_total = %v, want 1", v)
	}
	// Drain what came during the gap, then every message from now on
	// arrives, from both nodes.
	drain := time.After(500 * time.Millisecond)
	for done := false; !done; {
		select {
		case <-sub.Messages():
		case <-drain:
			done = true
		}
	}
	waitNodes(t, pub, 2)
	const per = 10
	for i := range per {
		for _, ch := range chans {
			if err := pub.Publish(ctx, ch, []byte(fmt.Sprint(i))); err != nil {
				t.Fatal(err)
			}
		}
	}
	nodes := map[string]int{}
	for _, m := range recv(t, sub, per*len(chans), 20*time.Second) {
		nodes[m.Node]++
	}
	if nodes["n2"] == 0 {
		t.Errorf("no message came through the node that joined during the gap: %v", nodes)
	}
}

// waitNodes waits until c sees n ready nodes.
func waitNodes(t *testing.T, c *fanout.Client, n int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for len(c.Nodes().Ready()) != n {
		if time.Now().After(deadline) {
			t.Fatalf("the client does not see %d ready nodes", n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
