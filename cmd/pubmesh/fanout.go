package main

import (
	"context"
	"fmt"
	"log/slog"
	"os/signal"
	"strings"
	"syscall"

	"github.com/urfave/cli/v2"
	"go.opentelemetry.io/otel/trace"

	"github.com/pubmesh/pubmesh/discovery"
	"github.com/pubmesh/pubmesh/fanout"
)

// fanoutFlags are the flags of commands that publish or subscribe through
// a fanout client, on top of etcdFlags and the Redis credentials and TLS.
func fanoutFlags() []cli.Flag {
	return append(append(append(etcdFlags(), redisClientFlags()...),
		&cli.IntFlag{
			Name:    "replicas",
			Value:   1,
			Usage:   "nodes each message is published to (2: a single node crash loses nothing)",
			EnvVars: []string{"PUBMESH_REPLICAS"},
		},
		logLevelFlag("warn"),
	), tracingFlags()...)
}

// openFanout validates the channel arguments, builds the logger, makes
// c.Context end on SIGINT/SIGTERM and connects a fanout client. The caller
// calls done when finished.
func openFanout(c *cli.Context, channels []string, overflow fanout.Overflow) (client *fanout.Client, log *slog.Logger, done func(), err error) {
	for _, ch := range channels {
		if err := fanout.ValidateChannel(ch); err != nil {
			return nil, nil, nil, usageError{err}
		}
		if strings.HasPrefix(ch, "-") {
			// Only reachable after "--": a mistyped flag, far more likely
			// than a channel meant to start with "-".
			return nil, nil, nil, usageError{fmt.Errorf("channel %q starts with '-': the CLI takes no such channel names (a misplaced flag?)", ch)}
		}
	}
	if log, err = newLogger(c); err != nil {
		return nil, nil, nil, usageError{err}
	}
	ctx, stop := signal.NotifyContext(c.Context, syscall.SIGINT, syscall.SIGTERM)
	c.Context = ctx
	tp, stopTracing, err := startTracing(c, "pubmesh-"+c.Command.Name, log)
	if err != nil {
		stop()
		return nil, nil, nil, err
	}
	if client, err = newFanout(c, log, overflow, tp.TracerProvider()); err != nil {
		stopTracing()
		stop()
		return nil, nil, nil, err
	}
	return client, log, func() { client.Close(); stopTracing(); stop() }, nil
}

// newFanout builds a fanout client from fanoutFlags.
func newFanout(c *cli.Context, log *slog.Logger, overflow fanout.Overflow, tp trace.TracerProvider) (*fanout.Client, error) {
	if err := discovery.ValidID(c.String("cluster")); err != nil {
		return nil, usageError{fmt.Errorf("invalid --cluster: %w", err)}
	}
	if r := c.Int("replicas"); r < 1 || r > 8 {
		return nil, usageError{fmt.Errorf("invalid --replicas %d: want 1-8", r)}
	}
	cfg := fanout.Config{
		Cluster: c.String("cluster"),
		ID:      "cli-" + hostPID(),
		// "subscribe" or "publish": what pubmesh clients shows.
		Role:     c.Command.Name,
		Replicas: c.Int("replicas"),
		Overflow: overflow,
		Logger:   log,
		// nil without --otlp-endpoint: no tracing
		TracerProvider: tp,
	}
	if err := setFanoutSecurity(c, log, &cfg); err != nil {
		return nil, err
	}
	// fanout.New waits for etcd until its context ends, which suits a
	// service; a person at a terminal wants an answer: give up after
	// --etcd-timeout.
	ctx, cancel := context.WithTimeout(c.Context, c.Duration("etcd-timeout"))
	defer cancel()
	client, err := fanout.New(ctx, cfg)
	if err != nil && ctx.Err() != nil && c.Context.Err() == nil {
		return nil, fmt.Errorf("etcd %s unreachable after --etcd-timeout %s: %w", c.String("etcd"), c.Duration("etcd-timeout"), err)
	}
	return client, err
}
