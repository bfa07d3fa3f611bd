package fanout_test

import (
	"context"
	"fmt"

	"github.com/pubmesh/pubmesh/fanout"
	"github.com/pubmesh/pubmesh/pubmeshtest"
)

// A client publishes to a two-node cluster and a subscription receives the
// message. pubmeshtest runs a real etcd and two real nodes (agents with
// their redis-servers); in production `pubmesh node` runs the nodes.
func Example() {
	ctx := context.Background()
	cluster, err := pubmeshtest.Start(ctx, pubmeshtest.Options{Nodes: 2})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer cluster.Close()

	c, err := fanout.New(ctx, fanout.Config{
		Etcd:    cluster.Etcd(),
		Cluster: cluster.Name(),
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer c.Close()

	sub, err := c.Subscribe(ctx, "orders.eu")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer sub.Close()
	if err := c.Publish(ctx, "orders.eu", []byte("order 1 placed")); err != nil {
		fmt.Println(err)
		return
	}
	m := <-sub.Messages()
	fmt.Printf("%s: %s (ready nodes: %d)\n", m.Channel, m.Payload, len(c.Nodes().Ready()))
	// Output: orders.eu: order 1 placed (ready nodes: 2)
}

// One goroutine publishes a stream of messages without waiting for each
// answer: PublishAsync queues them into the nodes' pipelines in order, and
// Flush waits for all of them and reports the first failure.
func ExampleClient_PublishAsync() {
	ctx := context.Background()
	cluster, err := pubmeshtest.Start(ctx, pubmeshtest.Options{Nodes: 2})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer cluster.Close()

	c, err := fanout.New(ctx, fanout.Config{Etcd: cluster.Etcd(), Cluster: cluster.Name()})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer c.Close()
	sub, err := c.Subscribe(ctx, "ticks")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer sub.Close()

	for i := range 1000 {
		c.PublishAsync(ctx, "ticks", fmt.Appendf(nil, "tick %d", i))
	}
	if err := c.Flush(ctx); err != nil {
		fmt.Println("some publishes failed:", err)
		return
	}
	var last *fanout.Message
	for range 1000 {
		last = <-sub.Messages()
	}
	fmt.Printf("%s: %s\n", last.Channel, last.Payload)
	// Output: ticks: tick 999
}
