package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/pubmesh/pubmesh/discovery"
)

func clientsCommand() *cli.Command {
	return &cli.Command{
		Name:      "clients",
		Usage:     "list the cluster's fanout clients (gateways, services) and which configuration revision each part runs",
		UsageText: "pubmesh clients [--etcd ENDPOINTS] [--cluster NAME] [--json]",
		Description: "Prints a table (ID, ROLE, HOST, PID, VERSION, CONFIG, STARTED) of the registered fanout\n" +
			"clients, sorted by id: gateways (ROLE gateway) and services embedding the client (the role they\n" +
			"set, or -). CONFIG is the cluster configuration revision the client runs (0: the defaults);\n" +
			"STARTED is how long ago it started. A last line compares every node and client with the\n" +
			"cluster's current configuration revision, so you see when the whole cluster has caught up.\n" +
			"--json prints a JSON array of client objects (id, role, host, pid, version, config_revision,\n" +
			"started_at) instead, and the last line on stderr.",
		Flags: append(etcdFlags(),
			&cli.BoolFlag{
				Name:    "json",
				Usage:   "print a JSON array instead of a table",
				EnvVars: []string{"PUBMESH_JSON"},
			},
			logLevelFlag("warn"),
		),
		Action: runClients,
	}
}

func runClients(c *cli.Context) error {
	if c.Args().Present() {
		return usageError{fmt.Errorf("unexpected argument %q (see pubmesh clients --help)", c.Args().First())}
	}
	log, err := newLogger(c)
	if err != nil {
		return usageError{err}
	}
	if err := discovery.ValidID(c.String("cluster")); err != nil {
		return fmt.Errorf("invalid --cluster: %w", err)
	}
	reg, etcd, err := openRegistry(c, log)
	if err != nil {
		return fmt.Errorf("%w: is a cluster running there? Start one with `pubmesh dev` (or `make run`), or point --etcd at yours", err)
	}
	defer etcd.Close()
	ctx, cancel := context.WithTimeout(c.Context, c.Duration("etcd-timeout"))
	defer cancel()
	clients, err := reg.Clients(ctx)
	if err != nil {
		return err
	}
	nodes, _, err := reg.List(ctx)
	if err != nil {
		return err
	}
	conf, err := reg.Config(ctx)
	if err != nil {
		return err
	}
	slices.SortFunc(clients, func(a, b discovery.ClientInfo) int { return strings.Compare(a.ID, b.ID) })
	summary := configSummary(conf, nodes, clients)
	if c.Bool("json") {
		b, err := json.Marshal(clients)
		if err != nil {
			return err
		}
		fmt.Fprintf(c.App.Writer, "%s\n", b)
		fmt.Fprintln(c.App.ErrWriter, summary)
		return nil
	}
	if err := printClients(c.App.Writer, clients, time.Now()); err != nil {
		return err
	}
	fmt.Fprintln(c.App.Writer, summary)
	return nil
}

// printClients writes the clients as a table.
func printClients(w io.Writer, clients []discovery.ClientInfo, now time.Time) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tROLE\tHOST\tPID\tVERSION\tCONFIG\tSTARTED")
	for _, ci := range clients {
		started := "-"
		if !ci.StartedAt.IsZero() {
			started = uptime(now.Sub(ci.StartedAt)) + " ago"
		}
		pid := "-"
		if ci.PID != 0 {
			pid = strconv.Itoa(ci.PID)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%s\n", ci.ID, orDash(ci.Role), orDash(ci.Host), pid, orDash(ci.Version), ci.ConfigRevision, started)
	}
	return tw.Flush()
}

// configSummary says whether every node and client runs the cluster's
// current configuration revision.
func configSummary(conf discovery.StoredConfig, nodes []discovery.Node, clients []discovery.ClientInfo) string {
	revs := make([]int64, 0, len(nodes)+len(clients))
	for _, n := range nodes {
		revs = append(revs, n.ConfigRevision)
	}
	for _, ci := range clients {
		revs = append(revs, ci.ConfigRevision)
	}
	behind := 0
	for _, r := range revs {
		if r != conf.Revision {
			behind++
		}
	}
	what := fmt.Sprintf("revision %d", conf.Revision)
	if conf.Revision == 0 {
		what = "revision 0 (no configuration in etcd: the defaults)"
	}
	switch {
	case conf.Err != nil:
		// Every part ignores it and keeps its last good revision.
		return fmt.Sprintf("config: revision %d in etcd is invalid and ignored by every part (%s); %d parts (%d nodes, %d clients) keep their last good revision: fix it with pubmesh config",
			conf.Revision, oneLine(conf.Err.Error()), len(revs), len(nodes), len(clients))
	case len(revs) == 0:
		return fmt.Sprintf("config: cluster at %s; no node or client is running", what)
	case behind == 0:
		return fmt.Sprintf("config: all %d parts (%d nodes, %d clients) run %s", len(revs), len(nodes), len(clients), what)
	case conf.Revision == 0:
		return fmt.Sprintf("config: %d of %d parts still run another revision than %s", behind, len(revs), what)
	}
	return fmt.Sprintf("config: %d of %d parts run an older revision than %d", behind, len(revs), conf.Revision)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
