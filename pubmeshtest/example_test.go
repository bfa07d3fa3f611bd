package pubmeshtest_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/pubmesh/pubmesh/fanout"
	"github.com/pubmesh/pubmesh/pubmeshtest"
)

// A service's integration test: a real two-node cluster, a client that
// publishes and subscribes, and a third node that joins while it runs.
func TestOrdersAreBroadcast(t *testing.T) {
	t.Parallel()
	cl := pubmeshtest.New(t, pubmeshtest.Options{Nodes: 2})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	client, err := fanout.New(ctx, cl.FanoutConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	sub, err := client.Subscribe(ctx, "orders")
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()

	const n = 200
	for i := range n {
		if i == n/2 {
			if _, err := cl.AddNode(ctx); err != nil {
				t.Fatal(err)
			}
		}
		if err := client.Publish(ctx, "orders", fmt.Appendf(nil, "order %d", i)); err != nil {
			t.Fatal(err)
		}
	}
	for i := range n {
		select {
		case m := <-sub.Messages():
			if want := fmt.Sprintf("order %d", i); string(m.Payload) != want {
				t.Fatalf("message %d = %q, want %q", i, m.Payload, want)
			}
		case <-ctx.Done():
			t.Fatalf("received %d of %d messages", i, n)
		}
	}
	if got := len(client.Nodes().Ready()); got != 3 {
		t.Errorf("ready nodes = %d, want 3", got)
	}
}

// Start and Close serve code without a *testing.T, such as an Example.
func ExampleStart() {
	ctx := context.Background()
	cl, err := pubmeshtest.Start(ctx, pubmeshtest.Options{Nodes: 2})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer cl.Close()
	nodes, _, err := cl.Registry().List(ctx)
	if err != nil {
		fmt.Println(err)
		return
	}
	for _, n := range nodes {
		fmt.Println(n.ID, n.State)
	}
	// Output:
	// node1 ready
	// node2 ready
}
