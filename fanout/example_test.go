package fanout_test

import (
	"context"
	"fmt"
	"time"

	"github.com/pubmesh/pubmesh/discovery"
	"github.com/pubmesh/pubmesh/fanout"
	"github.com/pubmesh/pubmesh/internal/embedetcd"
	"github.com/pubmesh/pubmesh/internal/testredis"
)

// A client publishes to a two-node cluster and a subscription receives the
// message. The example starts a real etcd and two redis-servers and
// registers them itself; in production `pubmesh node` does that.
func Example() {
	etcd, _ := embedetcd.Start(embedetcd.Config{})
	defer etcd.Close()
	for i := range 2 {
		r, _ := testredis.Start()
		defer r.Close()
		cli, _ := discovery.Dial(context.Background(), discovery.EtcdConfig{Endpoints: []string{etcd.Endpoint()}})
		defer cli.Close()
		reg, _ := discovery.New(cli, discovery.Config{Cluster: "example"})
		g, _ := reg.Register(context.Background(), discovery.Node{
			ID: fmt.Sprintf("node%d", i), Addr: r.Addr, State: discovery.StateReady, StartedAt: time.Now(), Version: "example",
		}, discovery.RegisterOptions{})
		defer g.Close(context.Background())
	}

	ctx := context.Background()
	c, err := fanout.New(ctx, fanout.Config{
		Etcd:    discovery.EtcdConfig{Endpoints: []string{etcd.Endpoint()}},
		Cluster: "example",
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer c.Close()

	sub, _ := c.Subscribe(ctx, "orders.eu")
	defer sub.Close()
	if err := c.Publish(ctx, "orders.eu", []byte("order 1 placed")); err != nil {
		fmt.Println(err)
		return
	}
	m := <-sub.Messages()
	fmt.Printf("%s: %s (ready nodes: %d)\n", m.Channel, m.Payload, len(c.Nodes().Ready()))
	// Output: orders.eu: order 1 placed (ready nodes: 2)
}
