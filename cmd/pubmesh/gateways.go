package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/pubmesh/pubmesh/discovery"
)

func gatewaysCommand() *cli.Command {
	return &cli.Command{
		Name:      "gateways",
		Usage:     "list the cluster's WebSocket gateways with their URLs and counts",
		UsageText: "pubmesh gateways [--etcd ENDPOINTS] [--cluster NAME] [--json]",
		Description: "Prints a table (ID, URL, CONNECTIONS, SUBSCRIPTIONS, CHANNELS, VERSION, STARTED, UPDATED) of\n" +
			"the gateways registered in etcd (<prefix>/<cluster>/gateways/<id>, under each gateway's lease:\n" +
			"a crashed gateway leaves the list within 10 s), sorted by id. CONNECTIONS is the total, with\n" +
			"the count per transport in parentheses; the counts are refreshed every 5 s (UPDATED says how\n" +
			"long ago). With --json it prints a JSON array of gateway objects (id, url, host, pid,\n" +
			"started_at, version, connections by transport, subscriptions, channels, updated_at).",
		Flags: append(etcdFlags(),
			jsonFlag("print a JSON array instead of a table"),
			logLevelFlag("warn"),
		),
		Action: runGateways,
	}
}

func runGateways(c *cli.Context) error {
	if c.Args().Present() {
		return usageError{fmt.Errorf("unexpected argument %q (see pubmesh gateways --help)", c.Args().First())}
	}
	reg, etcd, err := openClusterRegistry(c)
	if err != nil {
		return err
	}
	defer etcd.Close()
	ctx, cancel := context.WithTimeout(c.Context, c.Duration("etcd-timeout"))
	defer cancel()
	gws, err := reg.Gateways(ctx)
	if err != nil {
		return err
	}
	if c.Bool("json") {
		b, err := json.Marshal(gws)
		if err != nil {
			return err
		}
		fmt.Fprintf(c.App.Writer, "%s\n", b)
		return nil
	}
	if err := printGateways(c.App.Writer, gws, time.Now()); err != nil {
		return err
	}
	fmt.Fprintln(c.App.Writer, plural(len(gws), "gateway"))
	return nil
}

// printGateways writes the gateways as a table.
func printGateways(w io.Writer, gws []discovery.GatewayInfo, now time.Time) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tURL\tCONNECTIONS\tSUBSCRIPTIONS\tCHANNELS\tVERSION\tSTARTED\tUPDATED")
	ago := func(t time.Time) string {
		if t.IsZero() {
			return "-"
		}
		return uptime(now.Sub(t)) + " ago"
	}
	for _, g := range gws {
		var parts []string
		for t, n := range g.Connections {
			parts = append(parts, t+" "+strconv.Itoa(n))
		}
		sort.Strings(parts)
		conns := strconv.Itoa(g.TotalConnections())
		if len(parts) > 0 {
			conns += " (" + strings.Join(parts, ", ") + ")"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%s\t%s\t%s\n", g.ID, orDash(g.URL), conns, g.Subscriptions, g.Channels,
			orDash(g.Version), ago(g.StartedAt), ago(g.UpdatedAt))
	}
	return tw.Flush()
}
