package ws

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/pubmesh/pubmesh/fanout"
	"github.com/pubmesh/pubmesh/internal/otlprecv"
	"github.com/pubmesh/pubmesh/internal/tracing"
)

// spanChain checks that spans hold, in order, each named span of trace id
// (service, name) with the previous one as its parent (the first one's
// parent is parent), and returns them.
func spanChain(t *testing.T, spans []otlprecv.Span, traceID, parent string, want ...[2]string) []otlprecv.Span {
	t.Helper()
	var out []otlprecv.Span
	for _, w := range want {
		found := false
		for _, s := range spans {
			if s.TraceID == traceID && s.Service == w[0] && s.Name == w[1] && s.ParentSpanID == parent {
				out, parent, found = append(out, s), s.SpanID, true
				break
			}
		}
		if !found {
			var all []string
			for _, s := range spans {
				all = append(all, fmt.Sprintf("%s/%s %s<-%s trace %s", s.Service, s.Name, s.SpanID, s.ParentSpanID, s.TraceID))
			}
			t.Fatalf("no span %s/%s in trace %s with parent %s; got:\n%s", w[0], w[1], traceID, parent, strings.Join(all, "\n"))
		}
	}
	return out
}

// TestBrowserTrace follows one message from a publishing service to a
// browser in one trace: a fanout client (service "publisher") publishes
// under its caller's span; the gateway (service "gateway", tracing as
// `pubmesh gateway --otlp-endpoint` does) records the node hop, the
// delivery and the WebSocket write; real Chromium receives the message;
// an in-process OTLP receiver gets the spans of both. Then a POST
// /api/publish with a traceparent header continues the caller's trace.
func TestBrowserTrace(t *testing.T) {
	tab := newBrowser(t)
	t.Parallel()
	rcv, err := otlprecv.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(rcv.Close)
	gp, pp := rcv.Provider(t, "gateway", 1), rcv.Provider(t, "publisher", 1)
	g := newGW(t, Config{Insecure: true, AllowOrigins: []string{"*"}, TracerProvider: gp.TracerProvider()}, gwOptions{nodes: 2})
	pubc, err := fanout.New(context.Background(), fanout.Config{EtcdClient: g.etcd, Cluster: g.reg.Cluster(),
		Logger: quietLogger(), TracerProvider: pp.TracerProvider()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pubc.Close() })

	if err := chromedp.Do(tab, chromedp.Navigate(g.url+"/pubmesh.js")); err != nil {
		t.Fatalf("load the page: %v", err)
	}
	eval := func(what, script string, await bool) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(tab, 30*time.Second)
		defer cancel()
		opts := []chromedp.EvaluateOption{}
		if await {
			opts = append(opts, chromedp.EvalAwaitPromise)
		}
		v, err := chromedp.Run(ctx, chromedp.Evaluate[string](script, opts...))
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		return v
	}
	eval("subscribe in the browser", fmt.Sprintf(`import('/pubmesh.js').then(async (M) => {
		window.got = [];
		const pm = new M.PubMesh({url: %q});
		pm.on('message', (m) => got.push(m));
		await pm.subscribe('traced');
		return 'ok';
	})`, g.wsURL), true)
	received := func(n int) {
		t.Helper()
		ctx, cancel := context.WithTimeout(tab, 20*time.Second)
		defer cancel()
		if err := chromedp.Do(ctx, chromedp.Poll[chromedp.Void](fmt.Sprintf("got.length >= %d", n))); err != nil {
			t.Fatalf("the browser did not get message %d: %v", n, err)
		}
	}
	flush := func() []otlprecv.Span {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		for _, p := range []*tracing.Provider{gp, pp} {
			if err := p.TracerProvider().(interface{ ForceFlush(context.Context) error }).ForceFlush(ctx); err != nil {
				t.Fatal(err)
			}
		}
		return rcv.Spans()
	}

	// A service's publish, under its own span.
	ctx, caller := pp.TracerProvider().Tracer("test").Start(context.Background(), "caller")
	if err := pubc.Publish(ctx, "traced", []byte(`{"n":1}`)); err != nil {
		t.Fatal(err)
	}
	caller.End()
	received(1)
	tid := caller.SpanContext().TraceID().String()
	var chain []otlprecv.Span
	// The write span ends when the frame is written, just before the
	// browser sees it: poll briefly for it to be exported.
	deadline := time.Now().Add(10 * time.Second)
	for {
		spans := flush()
		if hasSpan(spans, tid, SpanWrite) || time.Now().After(deadline) {
			chain = spanChain(t, spans, tid, caller.SpanContext().SpanID().String(),
				[2]string{"publisher", fanout.SpanPublish}, [2]string{"gateway", fanout.SpanNodeHop},
				[2]string{"gateway", fanout.SpanDeliver}, [2]string{"gateway", SpanWrite})
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	hop, write := chain[1], chain[3]
	if node := hop.Attrs["pubmesh.node"]; node != "n0" && node != "n1" {
		t.Fatalf("node hop's node %q", node)
	}
	if write.Attrs["pubmesh.connections"] != "1" || write.Attrs["pubmesh.channel"] != "traced" {
		t.Fatalf("write span attributes %v", write.Attrs)
	}
	if got := eval("read the message", `JSON.stringify(got[0].data)`, false); got != `{"n":1}` {
		t.Fatalf("browser got %s", got)
	}

	// POST /api/publish continues the trace of its traceparent header.
	const parentTrace, parentSpan = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
	req, err := http.NewRequest("POST", g.url+"/api/publish/traced", strings.NewReader(`{"n":2}`))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("traceparent", "00-"+parentTrace+"-"+parentSpan+"-01")
	if code, body := do(t, req); code != http.StatusOK {
		t.Fatalf("POST /api/publish: %d %v", code, body)
	}
	received(2)
	deadline = time.Now().Add(10 * time.Second)
	for {
		spans := flush()
		if hasSpan(spans, parentTrace, SpanWrite) || time.Now().After(deadline) {
			chain = spanChain(t, spans, parentTrace, parentSpan,
				[2]string{"gateway", SpanGatewayPublish}, [2]string{"gateway", fanout.SpanPublish},
				[2]string{"gateway", fanout.SpanNodeHop}, [2]string{"gateway", fanout.SpanDeliver},
				[2]string{"gateway", SpanWrite})
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if chain[0].Attrs["pubmesh.source"] != "http" {
		t.Fatalf("gateway publish attributes %v", chain[0].Attrs)
	}
}

func hasSpan(spans []otlprecv.Span, traceID, name string) bool {
	for _, s := range spans {
		if s.TraceID == traceID && s.Name == name {
			return true
		}
	}
	return false
}
