// Package tracing builds the OpenTelemetry TracerProvider of a pubmesh
// command from its --otlp-endpoint and --trace-sample-ratio flags: the SDK
// with a batching OTLP/gRPC exporter, a parent-based ratio sampler and a
// service.name resource. Without an endpoint it builds nothing, and the
// fanout client and gateway then trace nothing at no cost.
package tracing

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
)

// DefaultSampleRatio is the share of traces started by pubmesh (a publish
// with no sampled parent) that are recorded.
const DefaultSampleRatio = 0.01

// Config of a provider.
type Config struct {
	// Endpoint of the OTLP/gRPC collector: a URL, http://host:4317 for
	// plain gRPC or https://host:4317 for TLS (verified against the
	// system's roots), or host:port, taken as plain gRPC. Empty: tracing
	// off.
	Endpoint string
	// SampleRatio of the traces pubmesh starts; a publish under a caller's
	// span follows that span's decision (ParentBased).
	SampleRatio float64
	// Service is the service.name resource, such as "pubmesh-gateway".
	Service string
	// Version is the service.version resource. Default: none.
	Version string
	Logger  *slog.Logger
}

// Provider is a running TracerProvider, or none when tracing is off.
type Provider struct {
	sdk *sdktrace.TracerProvider
}

// New builds the provider. With cfg.Endpoint empty it returns a Provider
// whose TracerProvider is nil.
func New(ctx context.Context, cfg Config) (*Provider, error) {
	if cfg.Endpoint == "" {
		return &Provider{}, nil
	}
	if cfg.SampleRatio < 0 || cfg.SampleRatio > 1 {
		return nil, fmt.Errorf("tracing: sample ratio %v is not between 0 and 1", cfg.SampleRatio)
	}
	ep := cfg.Endpoint
	if !strings.Contains(ep, "://") {
		ep = "http://" + ep
	}
	exp, err := otlptracegrpc.New(ctx, otlptracegrpc.WithEndpointURL(ep))
	if err != nil {
		return nil, fmt.Errorf("tracing: OTLP exporter for %s: %w", cfg.Endpoint, err)
	}
	attrs := []attribute.KeyValue{semconv.ServiceName(cfg.Service)}
	if cfg.Version != "" {
		attrs = append(attrs, semconv.ServiceVersion(cfg.Version))
	}
	res, err := resource.Merge(resource.Default(), resource.NewWithAttributes(semconv.SchemaURL, attrs...))
	if err != nil {
		res = resource.NewWithAttributes(semconv.SchemaURL, attrs...)
	}
	sdk := sdktrace.NewTracerProvider(
		sdktrace.WithBatcher(exp),
		sdktrace.WithResource(res),
		sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.TraceIDRatioBased(cfg.SampleRatio))),
	)
	if cfg.Logger != nil {
		cfg.Logger.Info("tracing: exporting spans over OTLP", "endpoint", cfg.Endpoint, "sample_ratio", cfg.SampleRatio, "service", cfg.Service)
	}
	return &Provider{sdk: sdk}, nil
}

// TracerProvider is what fanout.Config and ws.Config take: nil when
// tracing is off.
func (p *Provider) TracerProvider() trace.TracerProvider {
	if p == nil || p.sdk == nil {
		return nil
	}
	return p.sdk
}

// Shutdown exports the spans still buffered and stops the exporter,
// within ctx. Nothing to do when tracing is off.
func (p *Provider) Shutdown(ctx context.Context) error {
	if p == nil || p.sdk == nil {
		return nil
	}
	if err := p.sdk.Shutdown(ctx); err != nil && !errors.Is(err, context.Canceled) {
		return fmt.Errorf("tracing: shutdown: %w", err)
	}
	return nil
}
