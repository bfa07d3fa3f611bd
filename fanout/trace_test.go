package fanout_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel/trace"

	"github.com/pubmesh/pubmesh/discovery"
	"github.com/pubmesh/pubmesh/fanout"
	"github.com/pubmesh/pubmesh/internal/otlprecv"
	"github.com/pubmesh/pubmesh/internal/tracing"
)

// TestTracing publishes through a real node, with and without tracing,
// and checks what the envelope carries (read on the node with a plain
// SUBSCRIBE) and which spans the OTLP receiver gets: with tracing on and
// sampled, one trace from the caller's span through the publish, the
// node hop and the delivery, with the delivery's context on the message;
// unsampled or off, no trace field and no span.
func TestTracing(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		on    bool    // both clients get a TracerProvider
		ratio float64 // of the publisher's sampler
		async bool
	}{
		{name: "off", on: false},
		{name: "unsampled", on: true, ratio: 0},
		{name: "sampled", on: true, ratio: 1},
		{name: "sampled async", on: true, ratio: 1, async: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			rs, _ := e.node("n0", discovery.StateReady)
			rcv, err := otlprecv.Start()
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(rcv.Close)
			var pubCfg, subCfg fanout.Config
			var pubP, subP *tracing.Provider
			if tc.on {
				pubP, subP = rcv.Provider(t, "publisher", tc.ratio), rcv.Provider(t, "subscriber", tc.ratio)
				pubCfg.TracerProvider, subCfg.TracerProvider = pubP.TracerProvider(), subP.TracerProvider()
			}
			pub, subc := e.client(pubCfg), e.client(subCfg)
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			sub, err := subc.Subscribe(ctx, "news")
			if err != nil {
				t.Fatal(err)
			}
			raw := redis.NewClient(&redis.Options{Addr: rs.Addr})
			t.Cleanup(func() { raw.Close() })
			ps := raw.Subscribe(ctx, "news")
			t.Cleanup(func() { ps.Close() })
			if _, err := ps.Receive(ctx); err != nil {
				t.Fatal(err)
			}

			pctx := ctx
			var caller string // the caller's span id, the publish span's parent
			if tc.on {
				var span trace.Span
				pctx, span = pubP.TracerProvider().Tracer("test").Start(ctx, "caller")
				caller = span.SpanContext().SpanID().String()
				defer span.End()
			}
			if tc.async {
				if err := pub.PublishAsync(pctx, "news", []byte("hello")).Err(); err != nil {
					t.Fatal(err)
				}
			} else if err := pub.Publish(pctx, "news", []byte("hello")); err != nil {
				t.Fatal(err)
			}
			m := recv(t, sub, 1, 10*time.Second)[0]
			rm, err := ps.ReceiveMessage(ctx)
			if err != nil {
				t.Fatal(err)
			}
			header, _, _ := strings.Cut(rm.Payload, "\n")
			fields := strings.Fields(header)
			sampled := tc.on && tc.ratio == 1
			if want := map[bool]int{false: 5, true: 6}[sampled]; len(fields) != want {
				t.Fatalf("envelope header %q has %d fields, want %d", header, len(fields), want)
			}
			if string(m.Payload) != "hello" || m.ID() == "" {
				t.Fatalf("message %q id %q", m.Payload, m.ID())
			}
			if got := m.SpanContext().IsValid(); got != sampled {
				t.Fatalf("message span context valid = %v, want %v", got, sampled)
			}

			// Flush every provider: what was recorded is now at the receiver.
			for _, p := range []*tracing.Provider{pubP, subP} {
				if err := p.Shutdown(ctx); err != nil {
					t.Fatal(err)
				}
			}
			spans := rcv.Spans()
			if !sampled {
				if len(spans) != 0 {
					t.Fatalf("got %d spans with tracing %s: %+v", len(spans), tc.name, spans)
				}
				return
			}
			byName := map[string]otlprecv.Span{}
			for _, s := range spans {
				if s.Name != "caller" {
					byName[s.Name] = s
				}
			}
			publish, hop, del := byName[fanout.SpanPublish], byName[fanout.SpanNodeHop], byName[fanout.SpanDeliver]
			for _, c := range []struct {
				span            otlprecv.Span
				name, service   string
				parent, traceID string
			}{
				{publish, fanout.SpanPublish, "publisher", caller, fields[5][3:35]},
				{hop, fanout.SpanNodeHop, "subscriber", publish.SpanID, publish.TraceID},
				{del, fanout.SpanDeliver, "subscriber", hop.SpanID, publish.TraceID},
			} {
				if c.span.Name != c.name || c.span.Service != c.service || c.span.ParentSpanID != c.parent || c.span.TraceID != c.traceID {
					t.Fatalf("span %s: got %+v, want service %s, parent %s, trace %s (all: %+v)", c.name, c.span, c.service, c.parent, c.traceID, spans)
				}
			}
			if publish.Attrs["pubmesh.channel"] != "news" || publish.Attrs["pubmesh.node"] != "n0" || hop.Attrs["pubmesh.node"] != "n0" {
				t.Fatalf("attributes: publish %v, hop %v", publish.Attrs, hop.Attrs)
			}
			if !strings.Contains(fields[5], publish.SpanID) {
				t.Fatalf("envelope traceparent %s does not name the publish span %s", fields[5], publish.SpanID)
			}
			if m.SpanContext().SpanID().String() != del.SpanID {
				t.Fatalf("message span %s, delivery span %s", m.SpanContext().SpanID(), del.SpanID)
			}
			if hop.Start.After(hop.End) || !hop.End.Equal(del.Start) {
				t.Fatalf("hop %v-%v, delivery from %v", hop.Start, hop.End, del.Start)
			}
		})
	}
}
