// Package otlprecv is an OTLP/gRPC trace receiver for tests: a real
// collector endpoint (the TraceService an OpenTelemetry Collector serves on
// port 4317) that keeps every span it is sent, so a test can export to it
// through the ordinary OTLP exporter and check what arrived.
package otlprecv

import (
	"context"
	"encoding/hex"
	"fmt"
	"net"
	"sync"
	"time"

	coltrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc"
)

// Span is one received span, flattened with its resource's service name.
type Span struct {
	Service      string
	Name         string
	TraceID      string // 32 hex digits
	SpanID       string // 16 hex digits
	ParentSpanID string // "" for a root span
	Kind         tracepb.Span_SpanKind
	Start, End   time.Time
	Attrs        map[string]string // every attribute, its value as text
	Links        []string          // the span ids of its links
}

// Receiver serves the OTLP TraceService on a loopback port.
type Receiver struct {
	coltrace.UnimplementedTraceServiceServer
	srv  *grpc.Server
	addr string

	mu       sync.Mutex
	spans    []Span
	requests int
	changed  chan struct{} // closed and replaced on every export
}

// Start listens on 127.0.0.1 (a port of the kernel's choice) and serves
// until Close.
func Start() (*Receiver, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("otlprecv: listen: %w", err)
	}
	r := &Receiver{srv: grpc.NewServer(), addr: l.Addr().String(), changed: make(chan struct{})}
	coltrace.RegisterTraceServiceServer(r.srv, r)
	go r.srv.Serve(l)
	return r, nil
}

// Addr is host:port.
func (r *Receiver) Addr() string { return r.addr }

// Endpoint is the URL an exporter (--otlp-endpoint) is given: plain gRPC.
func (r *Receiver) Endpoint() string { return "http://" + r.addr }

// Close stops the server at once.
func (r *Receiver) Close() { r.srv.Stop() }

// Export implements the TraceService.
func (r *Receiver) Export(_ context.Context, req *coltrace.ExportTraceServiceRequest) (*coltrace.ExportTraceServiceResponse, error) {
	var got []Span
	for _, rs := range req.GetResourceSpans() {
		service := ""
		for _, kv := range rs.GetResource().GetAttributes() {
			if kv.GetKey() == "service.name" {
				service = kv.GetValue().GetStringValue()
			}
		}
		for _, ss := range rs.GetScopeSpans() {
			for _, s := range ss.GetSpans() {
				sp := Span{Service: service, Name: s.GetName(), Kind: s.GetKind(),
					TraceID: hex.EncodeToString(s.GetTraceId()), SpanID: hex.EncodeToString(s.GetSpanId()),
					ParentSpanID: hex.EncodeToString(s.GetParentSpanId()),
					Start:        time.Unix(0, int64(s.GetStartTimeUnixNano())),
					End:          time.Unix(0, int64(s.GetEndTimeUnixNano())),
					Attrs:        map[string]string{}}
				for _, kv := range s.GetAttributes() {
					sp.Attrs[kv.GetKey()] = valueText(kv.GetValue())
				}
				for _, l := range s.GetLinks() {
					sp.Links = append(sp.Links, hex.EncodeToString(l.GetSpanId()))
				}
				got = append(got, sp)
			}
		}
	}
	r.mu.Lock()
	r.spans = append(r.spans, got...)
	r.requests++
	close(r.changed)
	r.changed = make(chan struct{})
	r.mu.Unlock()
	return &coltrace.ExportTraceServiceResponse{}, nil
}

func valueText(v interface {
	GetStringValue() string
	GetIntValue() int64
	GetBoolValue() bool
	GetDoubleValue() float64
}) string {
	switch {
	case v.GetStringValue() != "":
		return v.GetStringValue()
	case v.GetIntValue() != 0:
		return fmt.Sprint(v.GetIntValue())
	case v.GetBoolValue():
		return "true"
	case v.GetDoubleValue() != 0:
		return fmt.Sprint(v.GetDoubleValue())
	}
	return ""
}

// Spans returns a copy of every span received so far.
func (r *Receiver) Spans() []Span {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Span(nil), r.spans...)
}

// Requests is how many exports arrived (empty ones included).
func (r *Receiver) Requests() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.requests
}

// Wait returns the spans once cond holds for them, or what arrived so far
// and false when ctx ends first.
func (r *Receiver) Wait(ctx context.Context, cond func([]Span) bool) ([]Span, bool) {
	for {
		r.mu.Lock()
		spans := append([]Span(nil), r.spans...)
		changed := r.changed
		r.mu.Unlock()
		if cond(spans) {
			return spans, true
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return spans, false
		}
	}
}
