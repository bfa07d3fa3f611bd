package main

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/pubmesh/pubmesh/internal/tracing"
	"github.com/pubmesh/pubmesh/internal/version"
)

// tracingFlags are the OpenTelemetry flags of the commands that run a
// fanout client or a gateway (docs/operations.md, "Traces").
func tracingFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "otlp-endpoint", Usage: "export trace spans over OTLP/gRPC to this collector (http://host:4317 for plain gRPC, https://host:4317 for TLS; host:port is plain)", DefaultText: "none: tracing off", EnvVars: []string{"PUBMESH_OTLP_ENDPOINT"}},
		&cli.Float64Flag{Name: "trace-sample-ratio", Value: tracing.DefaultSampleRatio, Usage: "share of the traces pubmesh starts that are recorded (0-1); a publish under a sampled or unsampled caller's span follows the caller", EnvVars: []string{"PUBMESH_TRACE_SAMPLE_RATIO"}},
	}
}

// startTracing builds the TracerProvider of --otlp-endpoint for service
// (nil without the flag). stop flushes the spans still buffered, within 5
// seconds: call it after the fanout client and gateway are closed.
func startTracing(c *cli.Context, service string, log *slog.Logger) (p *tracing.Provider, stop func(), err error) {
	r := c.Float64("trace-sample-ratio")
	if r < 0 || r > 1 {
		return nil, nil, usageError{fmt.Errorf("invalid --trace-sample-ratio %v: want 0-1", r)}
	}
	p, err = tracing.New(c.Context, tracing.Config{Endpoint: c.String("otlp-endpoint"), SampleRatio: r,
		Service: service, Version: version.Version, Logger: log})
	if err != nil {
		return nil, nil, usageError{fmt.Errorf("--otlp-endpoint: %w", err)}
	}
	return p, func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := p.Shutdown(ctx); err != nil {
			log.Warn("tracing: spans not exported", "err", err)
		}
	}, nil
}
