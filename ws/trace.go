package ws

import (
	"context"
	"net/http"
	"sync/atomic"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/pubmesh/pubmesh/fanout"
)

// Tracing in the gateway (docs/operations.md, "Traces"): with
// Config.TracerProvider nil the handler has no tracer, and each hook is
// behind a nil check. With one:
//
//   - a publish from a client (WebSocket op or POST /api/publish) is the
//     span SpanGatewayPublish, the parent of the fanout client's
//     pubmesh.publish; POST /api/publish continues the trace of an
//     incoming traceparent header;
//   - a traced message (one whose fanout.Message has a span context) is
//     the span SpanWrite, a child of the fanout delivery, from the
//     moment the hub has it until the first WebSocket connection wrote
//     its frame. A frame is shared by every subscriber, so there is one
//     span per message and gateway, with the number of subscribers it went
//     to as an attribute, not one per connection: at 10,000 subscribers
//     per-connection spans would cost more than the write itself.

// The span names.
const (
	SpanGatewayPublish = "pubmesh.gateway_publish"
	SpanWrite          = "pubmesh.ws_write"
)

// frameTrace is the write span of a shared message frame; nil on a frame
// that is not traced.
type frameTrace struct {
	span  trace.Span
	ended atomic.Bool
}

// written ends the span, once: at the first connection's write.
func (ft *frameTrace) written() {
	if ft.ended.CompareAndSwap(false, true) {
		ft.span.End()
	}
}

// traceFrame starts the write span of m's frame f, going to n sessions.
// Called only with a tracer.
func (h *Handler) traceFrame(m *fanout.Message, f *outFrame, channel string, n int) {
	sc := m.SpanContext()
	if !sc.IsValid() {
		return
	}
	ctx := trace.ContextWithSpanContext(context.Background(), sc)
	_, span := h.tracer.Start(ctx, SpanWrite, trace.WithSpanKind(trace.SpanKindProducer),
		trace.WithAttributes(fanout.AttrChannel.String(channel), fanout.AttrMsgID.String(f.id),
			attribute.Int("pubmesh.connections", n)))
	f.tr = &frameTrace{span: span}
	if n == 0 {
		f.tr.written()
	}
}

func newTracer(tp trace.TracerProvider) trace.Tracer {
	if tp == nil {
		return nil
	}
	return tp.Tracer(fanout.TracerName)
}

// startPublish starts the span of a client's publish. Called only with a
// tracer.
func (h *Handler) startPublish(ctx context.Context, r publishRequest) (context.Context, trace.Span) {
	return h.tracer.Start(ctx, SpanGatewayPublish, trace.WithSpanKind(trace.SpanKindServer),
		trace.WithAttributes(fanout.AttrChannel.String(r.channel), attribute.String("pubmesh.source", r.source)))
}

func endPublish(span trace.Span, e *Error) {
	if e != nil {
		span.SetStatus(codes.Error, e.Message)
		span.SetAttributes(attribute.String("pubmesh.error", e.Code))
	}
	span.End()
}

// traceContext continues the trace of an HTTP request's traceparent
// header (W3C Trace Context), when the gateway traces.
func (h *Handler) traceContext(r *http.Request) context.Context {
	if h.tracer == nil {
		return r.Context()
	}
	return propagation.TraceContext{}.Extract(r.Context(), propagation.HeaderCarrier(r.Header))
}
