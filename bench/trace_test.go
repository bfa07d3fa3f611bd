package bench_test

import (
	"testing"

	"github.com/pubmesh/pubmesh/fanout"
	"github.com/pubmesh/pubmesh/internal/otlprecv"
)

// BenchmarkTracing is BenchmarkDeliver's path (publish from many
// goroutines, one subscriber, one node) with tracing off (no
// TracerProvider: the default), with an SDK provider that samples nothing
// (ratio 0: a span object per publish, no export, no trace field), and
// with every message traced (ratio 1: publish, node hop and delivery spans
// exported over OTLP/gRPC to an in-process receiver, a 56-byte trace field
// in each envelope). "off" must match BenchmarkDeliver's allocations: off
// costs nothing (docs/benchmarks.md, "Tracing").
func BenchmarkTracing(b *testing.B) {
	payload := make([]byte, 128)
	for _, tc := range []struct {
		name  string
		on    bool
		ratio float64
	}{
		{"off", false, 0},
		{"ratio-0", true, 0},
		{"ratio-1", true, 1},
	} {
		b.Run(tc.name, func(b *testing.B) {
			c := newCluster(b, 1)
			var pubCfg, subCfg fanout.Config
			subCfg.Overflow = fanout.Block
			if tc.on {
				rcv, err := otlprecv.Start()
				if err != nil {
					b.Fatal(err)
				}
				b.Cleanup(rcv.Close)
				for _, cfg := range []*fanout.Config{&pubCfg, &subCfg} {
					cfg.TracerProvider = rcv.Provider(b, "bench", tc.ratio).TracerProvider()
				}
			}
			pub := c.client(b, pubCfg)
			subc := c.client(b, subCfg)
			deliverAll(b, pub, subc, payload)
		})
	}
}
