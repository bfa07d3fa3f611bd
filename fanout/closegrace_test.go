package fanout_test

import (
	"context"
	"testing"
	"time"

	"github.com/pubmesh/pubmesh/discovery"
	"github.com/pubmesh/pubmesh/fanout"
)

// TestCloseDoesNotWaitRemoveGrace: a node that left keeps its connection
// for RemoveGrace, to read what it still sends; Close ends that wait
// instead of sitting it out (pubmesh dev's Ctrl-C took RemoveGrace longer
// because every node had just drained).
func TestCloseDoesNotWaitRemoveGrace(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.node("n1", discovery.StateReady)
	_, g2 := e.node("n2", discovery.StateReady)
	c := e.client(fanout.Config{RemoveGrace: time.Minute})
	sub, err := c.Subscribe(context.Background(), "news")
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	g2.Close(context.Background()) // n2 leaves: its connection is kept for RemoveGrace
	deadline := time.Now().Add(20 * time.Second)
	for len(c.Nodes().Nodes) != 1 {
		if time.Now().After(deadline) {
			t.Fatal("the client still sees n2")
		}
		time.Sleep(10 * time.Millisecond)
	}
	start := time.Now()
	c.Close()
	// Far below the one-minute grace, far above any machine's speed.
	if took := time.Since(start); took > 20*time.Second {
		t.Errorf("Close took %s: it waited for the removed node's grace", took)
	}
}
