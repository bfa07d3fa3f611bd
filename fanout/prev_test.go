package fanout_test

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pubmesh/pubmesh/discovery"
	"github.com/pubmesh/pubmesh/fanout"
)

// TestFailedPublishKeepsPrevLink: a publish that no node took does not
// become the predecessor of the next message, so subscribers deliver the
// next one at once instead of holding it ReorderWindow for a message that
// never existed (and counting a reorder gap, which means a message lost
// with a crashed node).
func TestFailedPublishKeepsPrevLink(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	_, g := e.node("n1", discovery.StateReady)
	pub := e.client(fanout.Config{WaitReady: 100 * time.Millisecond, Logger: quietLog()})
	reg := prometheus.NewRegistry()
	subc := e.client(fanout.Config{ReorderWindow: 2 * time.Second, Registerer: reg, Logger: quietLog()})
	ctx := context.Background()
	sub, err := subc.Subscribe(ctx, "c")
	if err != nil {
		t.Fatal(err)
	}
	waitNodes := func(n int) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for len(pub.Nodes().Ready()) != n {
			if time.Now().After(deadline) {
				t.Fatalf("the publisher does not see %d ready nodes", n)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	waitNodes(1)
	if err := pub.Publish(ctx, "c", []byte("first")); err != nil {
		t.Fatal(err)
	}
	recv(t, sub, 1, 20*time.Second)
	// No ready node: the next publish fails.
	if err := g.SetState(ctx, discovery.StateJoining); err != nil {
		t.Fatal(err)
	}
	waitNodes(0)
	if err := pub.Publish(ctx, "c", []byte("lost")); err == nil {
		t.Fatal("publish without a ready node succeeded")
	}
	if err := g.SetState(ctx, discovery.StateReady); err != nil {
		t.Fatal(err)
	}
	waitNodes(1)
	if err := pub.Publish(ctx, "c", []byte("third")); err != nil {
		t.Fatal(err)
	}
	m := recv(t, sub, 1, 20*time.Second)[0]
	if string(m.Payload) != "third" {
		t.Fatalf("got %q, want third", m.Payload)
	}
	holds := metricValue(t, reg, "pubmesh_fanout_reorder_holds_total")
	gaps := metricValue(t, reg, "pubmesh_fanout_reorder_gaps_total")
	if holds != 0 || gaps != 0 {
		t.Errorf("the message after a failed publish was held back: reorder_holds_total %v, reorder_gaps_total %v", holds, gaps)
	}
}

// metricValue is the value of a registered counter or gauge without
// labels (the sum over its label values otherwise).
func metricValue(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		var v float64
		for _, m := range mf.GetMetric() {
			v += m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
		return v
	}
	t.Fatalf("metric %s not registered", name)
	return 0
}
