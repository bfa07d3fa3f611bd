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
			"With --json it prints a JSON array of client objects (id, role, host, pid, version,\n" +
			"config_revision, started_at) instead, and the last line on stderr.",
		Flags: append(etcdFlags(),
			jsonFlag("print a JSON array instead of a table"),
			logLevelFlag("warn"),
		),
		Action: runClients,
	}
}

func runClients(c *cli.Context) error {
	if c.Args().Present() {
		return usageError{fmt.Errorf("unexpected argument %q (see pubmesh clients --help)", c.Args().First())}
	}
	reg, etcd, err := openClusterRegistry(c)
	if err != nil {
		return err
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
	parts := fmt.Sprintf("%s, %s", plural(len(nodes), "node"), plural(len(clients), "client"))
	verb := "run"
	if behind == 1 {
		verb = "runs"
	}
	switch {
	case conf.Err != nil:
		// Every part ignores it and keeps its last good revision.
		return fmt.Sprintf("config: revision %d in etcd is invalid, so every part (%s) ignores it and keeps its last good revision (%s); fix it with pubmesh config",
			conf.Revision, parts, oneLine(conf.Err.Error()))
	case len(revs) == 0:
		return fmt.Sprintf("config: the cluster is at revision %d; no node or client is running", conf.Revision)
	case behind == 0:
		return fmt.Sprintf("config: every part (%s) runs revision %d", parts, conf.Revision)
	case conf.Revision == 0:
		return fmt.Sprintf("config: %d of %d parts %s another revision than 0 (no configuration in etcd: the defaults)", behind, len(revs), verb)
	}
	return fmt.Sprintf("config: %d of %d parts %s an older revision than %d", behind, len(revs), verb, conf.Revision)
}

// plural is "1 node", "2 nodes".
func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
