package main

import (
	"context"
	"fmt"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/pubmesh/pubmesh/discovery"
)

func drainCommand() *cli.Command {
	return &cli.Command{
		Name:      "drain",
		Usage:     "ask a node's agent (through etcd) to drain and leave",
		UsageText: "pubmesh drain [--etcd ENDPOINTS] [--cluster NAME] [--wait=false] [--timeout D] ID",
		Description: "The node's agent turns it draining (clients stop publishing to it but stay subscribed), waits\n" +
			"its --drain-timeout, deletes its key and stops its redis-server. With --wait (the default) this\n" +
			"command returns once the node is gone, or fails after --timeout.",
		Flags: append(etcdFlags(),
			&cli.BoolFlag{
				Name:    "wait",
				Value:   true,
				Usage:   "wait until the node has left",
				EnvVars: []string{"PUBMESH_DRAIN_WAIT"},
			},
			&cli.DurationFlag{
				Name:    "timeout",
				Value:   60 * time.Second,
				Usage:   "with --wait, fail if the node is still there after this long",
				EnvVars: []string{"PUBMESH_DRAIN_WAIT_TIMEOUT"},
			},
			logLevelFlag("warn"),
		),
		Action: runDrain,
	}
}

func runDrain(c *cli.Context) error {
	if c.NArg() != 1 {
		return usageError{fmt.Errorf("want exactly one node ID, got %d arguments (see pubmesh drain --help)", c.NArg())}
	}
	id := c.Args().First()
	if err := discovery.ValidID(id); err != nil {
		return usageError{err}
	}
	log, err := newLogger(c)
	if err != nil {
		return usageError{err}
	}
	reg, etcd, err := openRegistry(c, log)
	if err != nil {
		return err
	}
	defer etcd.Close()
	rctx, cancel := context.WithTimeout(c.Context, c.Duration("etcd-timeout"))
	defer cancel()
	if err := reg.RequestDrain(rctx, id, "pubmesh drain@"+hostPID()); err != nil {
		return err
	}
	out := c.App.Writer
	fmt.Fprintf(out, "drain of node %s requested\n", id)
	if !c.Bool("wait") {
		return nil
	}
	wctx, wcancel := context.WithTimeout(c.Context, c.Duration("timeout"))
	defer wcancel()
	t0 := time.Now()
	draining := false
	for snap := range reg.Watch(wctx, discovery.WatchOptions{}) {
		if snap.Stale {
			continue
		}
		var n *discovery.Node
		for i := range snap.Nodes {
			if snap.Nodes[i].ID == id {
				n = &snap.Nodes[i]
			}
		}
		if n == nil {
			fmt.Fprintf(out, "node %s has left (%s)\n", id, time.Since(t0).Round(10*time.Millisecond))
			return nil
		}
		if n.State == discovery.StateDraining && !draining {
			draining = true
			fmt.Fprintf(out, "node %s is draining\n", id)
		}
	}
	if c.Context.Err() != nil {
		return c.Context.Err()
	}
	return fmt.Errorf("node %s is still registered after %s (is its agent running? see its logs)", id, c.Duration("timeout"))
}
