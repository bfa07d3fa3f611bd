package fanout

import (
	"context"
	"encoding/hex"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
)

// Tracing (docs/operations.md, "Traces"). With Config.TracerProvider nil
// the client has no tracer and every hook below is behind a nil check: the
// publish and delivery paths then allocate nothing more and take no lock.
// With one, a publish is the span SpanPublish, and its traceparent rides
// in the envelope when the span is sampled; a subscriber that receives a
// traced message records SpanNodeHop (from the publish time to receipt,
// a child of the publisher's span) and SpanDeliver (from receipt to the
// subscriptions, a child of the hop), whose context Message.SpanContext
// returns, for the gateway's write span.

// TracerName is the instrumentation scope of pubmesh's spans.
const TracerName = "github.com/pubmesh/pubmesh"

// The span names.
const (
	SpanPublish = "pubmesh.publish"
	SpanNodeHop = "pubmesh.node_hop"
	SpanDeliver = "pubmesh.deliver"
)

// The span attributes.
const (
	AttrChannel = attribute.Key("pubmesh.channel")
	AttrNode    = attribute.Key("pubmesh.node")
	AttrClient  = attribute.Key("pubmesh.client")
	AttrMsgID   = attribute.Key("pubmesh.message_id")
)

func newTracer(tp trace.TracerProvider) trace.Tracer {
	if tp == nil {
		return nil
	}
	return tp.Tracer(TracerName)
}

// startPublish starts the publish span, a child of ctx's span. Called only
// with a tracer.
func (c *Client) startPublish(ctx context.Context, channel string, async bool) (context.Context, trace.Span) {
	return c.tracer.Start(ctx, SpanPublish, trace.WithSpanKind(trace.SpanKindProducer),
		trace.WithAttributes(AttrChannel.String(channel), AttrClient.String(c.cfg.ID),
			attribute.Bool("pubmesh.async", async)))
}

// endPublish ends a publish span with its outcome.
func endPublish(span trace.Span, err error) {
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
	}
	span.End()
}

// publishAccepted notes on the publish span which node took the message.
func publishAccepted(span trace.Span, nc *nodeConn) {
	span.AddEvent("accepted", trace.WithAttributes(AttrNode.String(nc.node.ID)))
	span.SetAttributes(AttrNode.String(nc.node.ID))
}

// traceparentOf is the envelope's trace field for a publish under span:
// its W3C traceparent if it is sampled, else "" (an unsampled trace is not
// worth 56 bytes a message, nor the subscribers' spans).
func traceparentOf(span trace.Span) string {
	sc := span.SpanContext()
	if !sc.IsSampled() {
		return ""
	}
	return formatTraceparent(sc)
}

func formatTraceparent(sc trace.SpanContext) string {
	var b [traceparentLen]byte
	tid, sid := sc.TraceID(), sc.SpanID()
	b[0], b[1], b[2] = '0', '0', '-'
	hex.Encode(b[3:35], tid[:])
	b[35] = '-'
	hex.Encode(b[36:52], sid[:])
	b[52] = '-'
	hex.Encode(b[53:55], []byte{byte(sc.TraceFlags())})
	return string(b[:])
}

// parseTraceparent reads a traceparent validTraceparent accepted.
func parseTraceparent(s string) (trace.SpanContext, bool) {
	if !validTraceparent(s) {
		return trace.SpanContext{}, false
	}
	var tid trace.TraceID
	var sid trace.SpanID
	var flags [1]byte
	if _, err := hex.Decode(tid[:], []byte(s[3:35])); err != nil {
		return trace.SpanContext{}, false
	}
	if _, err := hex.Decode(sid[:], []byte(s[36:52])); err != nil {
		return trace.SpanContext{}, false
	}
	if _, err := hex.Decode(flags[:], []byte(s[53:55])); err != nil {
		return trace.SpanContext{}, false
	}
	sc := trace.NewSpanContext(trace.SpanContextConfig{TraceID: tid, SpanID: sid,
		TraceFlags: trace.TraceFlags(flags[0]), Remote: true})
	return sc, sc.IsValid()
}

// msgTrace is a traced message's delivery span, from receipt to the
// subscriptions.
type msgTrace struct {
	deliver trace.Span
}

// traceReceipt records the node hop of a message whose envelope carries
// a trace, and starts its delivery span. Called only with a tracer.
func (c *Client) traceReceipt(m *Message, nc *nodeConn, env envelope) {
	parent, ok := parseTraceparent(env.trace)
	if !ok {
		return
	}
	now := time.Now()
	ctx := trace.ContextWithRemoteSpanContext(context.Background(), parent)
	id := env.id()
	ctx, hop := c.tracer.Start(ctx, SpanNodeHop, trace.WithSpanKind(trace.SpanKindConsumer),
		trace.WithTimestamp(time.Unix(0, env.ts)),
		trace.WithAttributes(AttrNode.String(nc.node.ID), AttrChannel.String(m.Channel),
			AttrMsgID.String(id), AttrClient.String(c.cfg.ID)))
	hop.End(trace.WithTimestamp(now))
	_, del := c.tracer.Start(ctx, SpanDeliver, trace.WithTimestamp(now),
		trace.WithAttributes(AttrChannel.String(m.Channel), AttrMsgID.String(id)))
	m.tr = &msgTrace{deliver: del}
}

// traceDelivered ends m's delivery span once the subscriptions have it.
func traceDelivered(m *Message) {
	if m.tr == nil {
		return
	}
	m.tr.deliver.End()
}

// traceDuplicate ends the delivery span of a copy the sequencer dropped
// (the message came already, from another replica or a retried publish).
func traceDuplicate(m *Message) {
	if m.tr == nil {
		return
	}
	m.tr.deliver.SetAttributes(attribute.Bool("pubmesh.duplicate", true))
	m.tr.deliver.End()
}

// SpanContext is the context of the message's delivery span, when the
// message was published with a sampled trace and this client traces
// (Config.TracerProvider); otherwise an invalid one. A consumer's own span
// for the message, such as the gateway's write, is its child.
func (m *Message) SpanContext() trace.SpanContext {
	if m.tr == nil {
		return trace.SpanContext{}
	}
	return m.tr.deliver.SpanContext()
}
