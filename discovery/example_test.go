package discovery_test

import (
	"context"
	"fmt"
	"time"

	"github.com/pubmesh/pubmesh/discovery"
	"github.com/pubmesh/pubmesh/pubmeshtest"
)

// A node registers under a lease and changes state; a watcher sees each
// change as a new snapshot. In production the agent (`pubmesh node`)
// registers, and every fanout client watches.
func Example() {
	ctx := context.Background()
	cluster, err := pubmeshtest.Start(ctx, pubmeshtest.Options{Nodes: -1}) // a real etcd
	if err != nil {
		fmt.Println(err)
		return
	}
	defer cluster.Close()

	cli, err := discovery.Dial(ctx, cluster.Etcd())
	if err != nil {
		fmt.Println(err)
		return
	}
	defer cli.Close()
	reg, err := discovery.New(cli, discovery.Config{Cluster: "example"})
	if err != nil {
		fmt.Println(err)
		return
	}

	wctx, stop := context.WithCancel(ctx)
	defer stop()
	snaps := reg.Watch(wctx, discovery.WatchOptions{})
	show := func() {
		for s := range snaps {
			if len(s.Nodes) == 0 {
				fmt.Println("no nodes")
			}
			for _, n := range s.Nodes {
				fmt.Println(n.ID, n.Addr, n.State)
			}
			return
		}
	}
	show()

	g, err := reg.Register(ctx, discovery.Node{
		ID: "node-1", Addr: "127.0.0.1:7001", State: discovery.StateJoining, StartedAt: time.Now(), Version: "example",
	}, discovery.RegisterOptions{})
	if err != nil {
		fmt.Println(err)
		return
	}
	show()
	if err := g.SetState(ctx, discovery.StateReady); err != nil {
		fmt.Println(err)
		return
	}
	show()
	g.Close(ctx) // revokes the lease: the node is gone at once
	show()
	// Output:
	// no nodes
	// node-1 127.0.0.1:7001 joining
	// node-1 127.0.0.1:7001 ready
	// no nodes
}
