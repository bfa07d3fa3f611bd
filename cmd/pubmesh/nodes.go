package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os/signal"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/pubmesh/pubmesh/discovery"
)

func nodesCommand() *cli.Command {
	return &cli.Command{
		Name:      "nodes",
		Usage:     "list the cluster's nodes",
		UsageText: "pubmesh nodes [--etcd ENDPOINTS] [--cluster NAME] [--json] [--watch]",
		Description: "Prints a table (ID, ADDR, STATE, UPTIME, VERSION, REDIS, CONFIG, REACHABLE) of the live nodes.\n" +
			"A node that is gone has no entry. CONFIG is the cluster configuration revision its agent has applied\n" +
			"to its Redis (0: the defaults; see pubmesh clients for the whole cluster). --json prints a JSON array\n" +
			"of node objects (id, addr, state, started_at, version, redis_version, run_id, attached,\n" +
			"config_revision, reachable); with --watch, one array per line on every change.",
		Flags: append(etcdFlags(),
			jsonFlag("print a JSON array instead of a table"),
			&cli.BoolFlag{
				Name:    "watch",
				Usage:   "print the list again on every change, until Ctrl-C",
				EnvVars: []string{"PUBMESH_WATCH"},
			},
			logLevelFlag("warn"),
		),
		Action: runNodes,
	}
}

func runNodes(c *cli.Context) error {
	if c.Args().Present() {
		return usageError{fmt.Errorf("unexpected argument %q (see pubmesh nodes --help)", c.Args().First())}
	}
	reg, etcd, err := openClusterRegistry(c)
	if err != nil {
		return err
	}
	defer etcd.Close()
	out := c.App.Writer
	asJSON := c.Bool("json")
	if !c.Bool("watch") {
		ctx, cancel := context.WithTimeout(c.Context, c.Duration("etcd-timeout"))
		defer cancel()
		nodes, _, err := reg.List(ctx)
		if err != nil {
			return err
		}
		if len(nodes) == 0 && !asJSON {
			fmt.Fprintf(c.App.ErrWriter, "no live nodes in cluster %q (etcd %s): start one with `pubmesh node --port 7001 --etcd %s --cluster %s`, or a whole local cluster with `pubmesh dev`\n",
				reg.Cluster(), c.String("etcd"), c.String("etcd"), reg.Cluster())
		}
		return printNodes(out, c.App.ErrWriter, nodes, probeNodes(c.Context, nodes), asJSON, time.Now())
	}
	ctx, stop := signal.NotifyContext(c.Context, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	for snap := range reg.Watch(ctx, discovery.WatchOptions{}) {
		if !asJSON {
			status := ""
			if snap.Stale {
				status = fmt.Sprintf(" (stale: etcd unreachable: %s)", oneLine(fmt.Sprint(snap.Err)))
			}
			fmt.Fprintf(out, "--- %s cluster %q, %d nodes%s\n", time.Now().Format("15:04:05"), reg.Cluster(), len(snap.Nodes), status)
		}
		if err := printNodes(out, c.App.ErrWriter, snap.Nodes, probeNodes(ctx, snap.Nodes), asJSON, time.Now()); err != nil {
			return err
		}
	}
	return nil
}

// nodeView is a node as `nodes --json` prints it: the registry's entry and
// whether it answered from here.
type nodeView struct {
	discovery.Node
	// ConfigRevision shadows the Node's, which is left out when 0.
	ConfigRevision int64  `json:"config_revision"`
	Reachable      bool   `json:"reachable"`
	ReachErr       string `json:"unreachable_error,omitempty"`
}

// printNodes writes nodes as a table, or as one line of JSON. unreachable
// holds the probe errors of nodes that did not answer; each is also
// explained on errw.
func printNodes(w, errw io.Writer, nodes []discovery.Node, unreachable map[string]error, asJSON bool, now time.Time) error {
	if asJSON {
		views := make([]nodeView, 0, len(nodes))
		for _, n := range nodes {
			v := nodeView{Node: n, ConfigRevision: n.ConfigRevision, Reachable: unreachable[n.ID] == nil}
			if err := unreachable[n.ID]; err != nil {
				v.ReachErr = err.Error()
			}
			views = append(views, v)
		}
		b, err := json.Marshal(views)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(w, "%s\n", b)
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tADDR\tSTATE\tUPTIME\tVERSION\tREDIS\tCONFIG\tREACHABLE")
	for _, n := range nodes {
		redis := n.RedisVersion
		if redis == "" {
			redis = "-"
		}
		if n.Attached {
			redis += " (attached)"
		}
		reach := "yes"
		if unreachable[n.ID] != nil {
			reach = "NO"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\n", n.ID, n.Addr, n.State, uptime(now.Sub(n.StartedAt)), n.Version, redis, n.ConfigRevision, reach)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, n := range nodes {
		if err := unreachable[n.ID]; err != nil {
			fmt.Fprintf(errw, "node %s is registered at %s but does not answer from here (%s): clients cannot use it; check its --advertise address or --attach\n",
				n.ID, n.Addr, oneLine(err.Error()))
		}
	}
	return nil
}

// uptime is a short duration: 45s, 12m3s, 5h2m, 3d4h.
func uptime(d time.Duration) string {
	if d < 0 {
		d = 0
	}
	d = d.Truncate(time.Second)
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm%ds", int(d.Minutes()), int(d.Seconds())%60)
	case d < 24*time.Hour:
		return fmt.Sprintf("%dh%dm", int(d.Hours()), int(d.Minutes())%60)
	}
	return fmt.Sprintf("%dd%dh", int(d.Hours())/24, int(d.Hours())%24)
}
