package fanout_test

import (
	"context"
	"fmt"
	"syscall"
	"testing"
	"time"

	"github.com/pubmesh/pubmesh/discovery"
	"github.com/pubmesh/pubmesh/fanout"
)

// waitHealth polls c.Health until cond holds, for up to 30 s.
func waitHealth(t *testing.T, c *fanout.Client, what string, cond func(fanout.Health) bool) fanout.Health {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		h := c.Health()
		if cond(h) {
			return h
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s; health: %+v", what, h)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func nodeHealth(h fanout.Health, id string) (fanout.NodeHealth, bool) {
	for _, n := range h.Nodes {
		if n.ID == id {
			return n, true
		}
	}
	return fanout.NodeHealth{}, false
}

// TestHealthCountsOnlyWorkingNodes: a ready registry entry whose address
// points nowhere is listed by Health as neither subscribed nor
// publishable, and does not make the client OK on its own.
func TestHealthCountsOnlyWorkingNodes(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	_, real := e.node("n1", discovery.StateReady)
	e.register("nowhere", fmt.Sprintf("127.0.0.1:%d", freePort(t)), discovery.StateReady)
	c := e.client(fanout.Config{Logger: quietLog()})
	if _, err := c.Subscribe(context.Background(), "a"); err != nil {
		t.Fatal(err)
	}
	h := waitHealth(t, c, "n1 subscribed and publishable", func(h fanout.Health) bool {
		n, ok := nodeHealth(h, "n1")
		return ok && n.Subscribed && n.Publishable && h.OK
	})
	n, ok := nodeHealth(h, "nowhere")
	if !ok || n.Subscribed || n.Publishable || n.Error == "" {
		t.Fatalf("the node that points nowhere: %+v (listed %v)", n, ok)
	}
	real.Close(context.Background())
	h = waitHealth(t, c, "n1 gone", func(h fanout.Health) bool { _, ok := nodeHealth(h, "n1"); return !ok })
	if h.OK {
		t.Fatalf("OK with only a node that points nowhere: %+v", h)
	}
}

// TestHealthRecoversWithoutTraffic: a node whose publish failed once (it
// was stopped) is publishable again once it answers and SuspectFor has
// passed, with no publish needed to prove it: a gateway that only
// subscribes must not stay unhealthy for ever after one failed publish.
func TestHealthRecoversWithoutTraffic(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	rs, _ := e.node("n1", discovery.StateReady)
	c := e.client(fanout.Config{Logger: quietLog(), PublishTimeout: 300 * time.Millisecond, SuspectFor: 500 * time.Millisecond})
	waitHealth(t, c, "n1 publishable", func(h fanout.Health) bool { return h.OK })
	if err := rs.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	err := c.Publish(ctx, "a", []byte("x"))
	cancel()
	if err == nil {
		t.Fatal("a publish to the only node, stopped, succeeded")
	}
	if n, _ := nodeHealth(c.Health(), "n1"); n.Publishable {
		t.Errorf("n1 publishable right after its publish failed: %+v", n)
	}
	if err := rs.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	waitHealth(t, c, "n1 publishable again, with no publish", func(h fanout.Health) bool { return h.OK })
}
