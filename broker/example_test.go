package broker_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/pubmesh/pubmesh/broker"
	"github.com/pubmesh/pubmesh/pubmeshtest"
)

// An agent starts a redis-server, registers it as joining, and turns it
// ready after the join delay; Shutdown drains it and stops the server.
func Example() {
	ctx := context.Background()
	// An etcd with no nodes: the agent below registers the first.
	cluster, err := pubmeshtest.Start(ctx, pubmeshtest.Options{Nodes: -1})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer cluster.Close()
	reg := cluster.Registry()

	port, err := pubmeshtest.FreePort()
	if err != nil {
		fmt.Println(err)
		return
	}
	agent, err := broker.New(broker.Config{
		Registry:     reg,
		ID:           "node-1",
		Port:         port,
		JoinTimeout:  100 * time.Millisecond,
		DrainTimeout: 100 * time.Millisecond,
		Logger:       slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	go agent.Run(ctx)
	select {
	case <-agent.Ready():
	case <-time.After(20 * time.Second):
		fmt.Println("not ready")
	}
	nodes, _, _ := reg.List(ctx)
	for _, n := range nodes {
		fmt.Println(n.ID, n.State)
	}

	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	agent.Shutdown(sctx)
	nodes, _, _ = reg.List(ctx)
	fmt.Println("nodes after shutdown:", len(nodes))
	// Output:
	// node-1 ready
	// nodes after shutdown: 0
}
