package otlprecv

import (
	"context"
	"testing"
	"time"

	"github.com/pubmesh/pubmesh/internal/tracing"
)

// Provider is a tracer provider for service that exports to r with the
// given sampling ratio, as `--otlp-endpoint` builds one; it is shut down
// (its spans flushed) when tb ends.
func (r *Receiver) Provider(tb testing.TB, service string, ratio float64) *tracing.Provider {
	tb.Helper()
	p, err := tracing.New(context.Background(), tracing.Config{Endpoint: r.Endpoint(), SampleRatio: ratio, Service: service})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		p.Shutdown(ctx)
	})
	return p
}
