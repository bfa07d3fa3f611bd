//go:build devtools

package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/pprof"
	"syscall"

	"github.com/urfave/cli/v2"

	"github.com/pubmesh/pubmesh/bench"
	"github.com/pubmesh/pubmesh/broker"
)

// benchCommand is `pubmesh bench`: the side-by-side benchmark of package
// bench, with every workload knob as a flag.
func benchCommand() *cli.Command {
	d := bench.DefaultConfig()
	return &cli.Command{
		Name:  "bench",
		Usage: benchUsage,
		Description: "Starts its own redis-servers on free loopback ports (one plain node, a Redis Cluster made with\n" +
			"redis-cli --cluster create, pubmesh nodes registered in an embedded etcd, a WebSocket gateway),\n" +
			"runs the same workload against each target and stops every server it started, by PID.\n" +
			"Main table rows: 1 go-redis one node hand-pipelined; 2 go-redis one node, one PUBLISH per call;\n" +
			"3 Redis Cluster PUBLISH; 4 Redis Cluster SPUBLISH/SSUBSCRIBE; 5 pubmesh fanout, one Publish per call;\n" +
			"6 the same with Replicas: 2; 7 pubmesh through the WebSocket gateway; 8 pubmesh with history on;\n" +
			"9 pubmesh PublishAsync from one goroutine; 10 pubmesh Publish from 4 goroutines;\n" +
			"11 row 7 with permessage-deflate (--compression) negotiated by every subscriber. Fan-out rows (a table of\n" +
			"their own): 12 and 13, 1 000 and 5 000 WebSocket clients over 10 and 100 channels on this binary's gateway\n" +
			"run as a child process (and --compare-gateway's beside it). Then pubmesh by node count,\n" +
			"and pubmesh latency at fixed fractions of row 5's max rate, each beside row 8's cluster (history on,\n" +
			"where it sustains the rate) and plain go-redis at the same rate. With the defaults a run takes\n" +
			"about 3.5 minutes on 2 cores (measurements of 5 s each, plus\n" +
			"setup and drain; the main table is measured twice, see --repeat). Progress goes to stderr, one\n" +
			"line a second; the tables go to stdout as Markdown and, with --out, to latest.md, latest.json\n" +
			"and latest.png. Exit status 1 if a measurement failed or a redis-server was left running.",
		Flags: []cli.Flag{
			&cli.IntFlag{Name: "channels", Value: d.Channels, EnvVars: []string{"PUBMESH_BENCH_CHANNELS"},
				Usage: "channels the messages are spread over; every subscriber subscribes to all"},
			&cli.IntFlag{Name: "publishers", Value: d.Publishers, EnvVars: []string{"PUBMESH_BENCH_PUBLISHERS"},
				Usage: "goroutines publishing one message per call (rows 2, 5, 6, 7); the default equals --pipeline-workers × --batch"},
			&cli.IntFlag{Name: "pipeline-workers", Value: d.PipelineWorkers, EnvVars: []string{"PUBMESH_BENCH_PIPELINE_WORKERS"},
				Usage: "goroutines sending hand-made pipelines (rows 1, 3, 4)"},
			&cli.IntFlag{Name: "batch", Value: d.Batch, EnvVars: []string{"PUBMESH_BENCH_BATCH"},
				Usage: "largest hand-made pipeline, in messages (rows 1, 3, 4)"},
			&cli.IntFlag{Name: "subscribers", Value: d.Subscribers, EnvVars: []string{"PUBMESH_BENCH_SUBSCRIBERS"},
				Usage: "subscriber connections (fanout clients, WebSocket clients), each receiving every message"},
			&cli.IntFlag{Name: "payload", Value: d.PayloadSize, EnvVars: []string{"PUBMESH_BENCH_PAYLOAD"},
				Usage: fmt.Sprintf("payload size in bytes, timestamp included (at least %d)", bench.MinPayload)},
			&cli.DurationFlag{Name: "duration", Value: d.Duration, EnvVars: []string{"PUBMESH_BENCH_DURATION"},
				Usage: "how long each measurement publishes (the drain comes on top)"},
			&cli.Float64Flag{Name: "rate", Value: d.Rate, EnvVars: []string{"PUBMESH_BENCH_RATE"},
				Usage: "offered load of the main table in messages/s over all publishers; 0 publishes as fast as the target takes them", DefaultText: "0 (max)"},
			&cli.IntFlag{Name: "max-backlog", Value: d.MaxBacklog, EnvVars: []string{"PUBMESH_BENCH_MAX_BACKLOG"},
				Usage: "publishers pause while more than this many messages per subscriber are published but not delivered"},
			&cli.IntFlag{Name: "nodes", Value: d.Nodes, EnvVars: []string{"PUBMESH_BENCH_NODES"},
				Usage: "pubmesh nodes of rows 5-7 and masters of the Redis Cluster (rows 3, 4)"},
			&cli.IntSliceFlag{Name: "node-counts", Value: cli.NewIntSlice(d.NodeCounts...), EnvVars: []string{"PUBMESH_BENCH_NODE_COUNTS"},
				Usage: "node counts of the scaling table (comma-separated)"},
			&cli.Float64SliceFlag{Name: "load-fractions", Value: cli.NewFloat64Slice(d.LoadFractions...), EnvVars: []string{"PUBMESH_BENCH_LOAD_FRACTIONS"},
				Usage: "fractions of row 5's max published rate for the latency table (comma-separated); each also runs row 8's cluster (history on, where it sustains the rate) and plain go-redis at that rate"},
			&cli.IntSliceFlag{Name: "rows", Value: cli.NewIntSlice(d.Rows...), EnvVars: []string{"PUBMESH_BENCH_ROWS"},
				Usage: "rows to run (comma-separated: 1 to 10, and the WebSocket fan-out rows 12 and 13)"},
			&cli.IntFlag{Name: "repeat", Value: d.Repeat, EnvVars: []string{"PUBMESH_BENCH_REPEAT"},
				Usage: "measure each main-table row this many times, round-robin, and keep its best attempt (all are listed)"},
			&cli.BoolFlag{Name: "skip-scaling", EnvVars: []string{"PUBMESH_BENCH_SKIP_SCALING"},
				Usage: "leave out the node-count table"},
			&cli.BoolFlag{Name: "skip-latency", EnvVars: []string{"PUBMESH_BENCH_SKIP_LATENCY"},
				Usage: "leave out the fixed-rate latency table"},
			&cli.DurationFlag{Name: "settle", Value: d.Settle, EnvVars: []string{"PUBMESH_BENCH_SETTLE"},
				Usage: "after publishing, how long the delivered count must stay still before the rest counts as lost"},
			&cli.DurationFlag{Name: "drain-timeout", Value: d.DrainTimeout, EnvVars: []string{"PUBMESH_BENCH_DRAIN_TIMEOUT"},
				Usage: "longest wait for deliveries after publishing stops"},
			&cli.StringFlag{Name: "pubsub-buffer-limit", Value: "64mb 16mb 60", EnvVars: []string{"PUBMESH_BENCH_PUBSUB_BUFFER_LIMIT"},
				Usage: "client-output-buffer-limit for pub/sub clients of every redis-server started, \"HARD SOFT SECONDS\" (as pubmesh nodes)"},
			&cli.StringFlag{Name: "out", Value: "bench/results", EnvVars: []string{"PUBMESH_BENCH_OUT"},
				Usage: "directory for latest.md, latest.json and latest.png; empty writes no files"},
			&cli.StringFlag{Name: "compare-gateway", EnvVars: []string{"PUBMESH_BENCH_COMPARE_GATEWAY"}, DefaultText: "none",
				Usage: "another pubmesh executable (an older build) whose gateway the WebSocket fan-out rows (12, 13) also measure, against the same nodes, for the ratio of gateway CPU per delivered frame"},
			&cli.StringFlag{Name: "cpuprofile", EnvVars: []string{"PUBMESH_BENCH_CPUPROFILE"}, DefaultText: "off",
				Usage: "write a CPU profile of the whole run to this file (go tool pprof)"},
			&cli.BoolFlag{Name: "quiet", EnvVars: []string{"PUBMESH_BENCH_QUIET"},
				Usage: "no progress lines on stderr"},
		},
		Action: runBench,
	}
}

func runBench(c *cli.Context) error {
	if c.Args().Present() {
		return usageError{fmt.Errorf("bench takes no arguments, got %q (see pubmesh bench --help)", c.Args().First())}
	}
	limit, err := broker.ParseBufferLimit(c.String("pubsub-buffer-limit"))
	if err != nil {
		return usageError{fmt.Errorf("invalid --pubsub-buffer-limit: %w", err)}
	}
	for _, name := range []string{"channels", "publishers", "pipeline-workers", "batch", "subscribers", "nodes", "max-backlog", "repeat"} {
		if c.Int(name) < 1 {
			return usageError{fmt.Errorf("invalid --%s %d: must be at least 1", name, c.Int(name))}
		}
	}
	for _, name := range []string{"duration", "settle", "drain-timeout"} {
		if c.Duration(name) <= 0 {
			return usageError{fmt.Errorf("invalid --%s %s: must be positive", name, c.Duration(name))}
		}
	}
	var progress io.Writer = c.App.ErrWriter
	if c.Bool("quiet") {
		progress = io.Discard
	}
	cfg := bench.Config{
		Channels:          c.Int("channels"),
		Publishers:        c.Int("publishers"),
		PipelineWorkers:   c.Int("pipeline-workers"),
		Batch:             c.Int("batch"),
		Subscribers:       c.Int("subscribers"),
		PayloadSize:       c.Int("payload"),
		Duration:          c.Duration("duration"),
		Rate:              c.Float64("rate"),
		MaxBacklog:        c.Int("max-backlog"),
		Nodes:             c.Int("nodes"),
		NodeCounts:        c.IntSlice("node-counts"),
		LoadFractions:     c.Float64Slice("load-fractions"),
		Rows:              c.IntSlice("rows"),
		CompareGateway:    c.String("compare-gateway"),
		Repeat:            c.Int("repeat"),
		SkipScaling:       c.Bool("skip-scaling"),
		SkipLatency:       c.Bool("skip-latency"),
		Settle:            c.Duration("settle"),
		DrainTimeout:      c.Duration("drain-timeout"),
		PubsubBufferLimit: limit.String(),
		OutDir:            c.String("out"),
		Progress:          progress,
	}
	if err := cfg.Validate(); err != nil {
		return usageError{err}
	}
	// The fan-out rows run this very binary's gateway as a child process.
	if exe, err := os.Executable(); err == nil {
		cfg.GatewayBinary = exe
	}
	if p := c.String("cpuprofile"); p != "" {
		f, err := os.Create(p)
		if err != nil {
			return fmt.Errorf("--cpuprofile: %w", err)
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return fmt.Errorf("--cpuprofile: %w", err)
		}
		defer pprof.StopCPUProfile()
	}
	// SIGINT/SIGTERM cancel the run; Run then stops every server it
	// started before returning.
	ctx, stop := signal.NotifyContext(c.Context, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	rep, err := bench.Run(ctx, cfg)
	if rep != nil {
		rep.Markdown(c.App.Writer)
	}
	if err != nil {
		return err
	}
	if cfg.OutDir != "" {
		fmt.Fprintf(c.App.ErrWriter, "bench: wrote %[1]s/latest.md, %[1]s/latest.json and %[1]s/latest.png\n", cfg.OutDir)
	}
	if rep.Failed() {
		return errors.New("bench: some measurements failed or a redis-server was left running (see the tables)")
	}
	return nil
}
