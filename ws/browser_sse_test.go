package ws

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// browserPage drives one tab: run awaits a script, eval returns JSON,
// wait polls a condition.
type browserPage struct {
	t   *testing.T
	tab context.Context
}

func (p browserPage) run(what, script string) {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.tab, 30*time.Second)
	defer cancel()
	if err := chromedp.Do(ctx, chromedp.Evaluate[chromedp.Void](script, chromedp.EvalAwaitPromise)); err != nil {
		p.t.Fatalf("%s: %v", what, err)
	}
}

func (p browserPage) eval(expr string) string {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.tab, 30*time.Second)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[string]("JSON.stringify("+expr+")"))
	if err != nil {
		p.t.Fatalf("evaluate %s: %v", expr, err)
	}
	return v
}

func (p browserPage) wait(what, cond string) {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.tab, 45*time.Second)
	defer cancel()
	if err := chromedp.Do(ctx, chromedp.Poll[chromedp.Void](cond, chromedp.WithPollingTimeout(40*time.Second))); err != nil {
		p.t.Fatalf("waiting for %s (%s): %v\nlog: %s", what, cond, err, p.eval("window.log"))
	}
}

// TestBrowserEventSource: a plain EventSource in Chromium on /sse gets
// the messages of a history channel; its gateway stops (1001), messages
// are published through another one meanwhile, a new gateway comes back
// on the same address, and EventSource, reconnecting by itself with the
// last id it got (Last-Event-ID), gets every missed message once, in
// order, then live ones.
func TestBrowserEventSource(t *testing.T) {
	tab := newBrowser(t)
	t.Parallel()
	cfg := Config{Insecure: true}
	a := newGW(t, cfg, gwOptions{})
	a.applyConfig(t, `namespaces: [{match: "h.*", history_size: 1000}]`)
	b := a.another(t, cfg, "127.0.0.1:0")
	addr := strings.TrimPrefix(a.url, "http://")
	if err := chromedp.Do(tab, chromedp.Navigate(a.url+"/pubmesh.js")); err != nil {
		t.Fatalf("load the page: %v", err)
	}
	p := browserPage{t, tab}
	p.run("open an EventSource", `new Promise((resolve) => {
		window.got = []; window.log = []; window.subscribed = [];
		const es = new EventSource('/sse?channel=h.es');
		es.addEventListener('subscribed', (e) => { subscribed.push(JSON.parse(e.data)); resolve(); });
		es.addEventListener('message', (e) => got.push(JSON.parse(e.data).data.n));
		es.addEventListener('close', (e) => log.push('close ' + e.data));
		es.onerror = () => log.push('error, readyState ' + es.readyState);
		window.es = es;
	})`)
	publish := func(g *gw, from, to int) {
		t.Helper()
		for i := from; i <= to; i++ {
			if code, body := g.post(t, "/api/publish/h.es", "", []byte(fmt.Sprintf(`{"n":%d}`, i))); code != 200 {
				t.Fatalf("publish %d: %d %v", i, code, body)
			}
		}
	}
	publish(b, 1, 3)
	p.wait("the first three", `window.got.length === 3`)
	if err := a.gateway.Close(); err != nil {
		t.Fatal(err)
	}
	p.wait("the stream to end", `window.log.some((l) => l.startsWith('close {"op":"close","code":1001'))`)
	publish(b, 4, 8)
	a.another(t, cfg, addr)
	p.wait("the resume", `window.subscribed.length === 2`)
	p.wait("the missed messages", `window.got.length >= 8`)
	if got := p.eval(`window.subscribed[1]`); !strings.Contains(got, `"recovered":true,"count":5`) {
		t.Fatalf("subscribed after the restart: %s", got)
	}
	publish(b, 9, 9)
	p.wait("live again", `window.got.length >= 9`)
	time.Sleep(300 * time.Millisecond) // room for a duplicate to show
	if got := p.eval(`window.got`); got != "[1,2,3,4,5,6,7,8,9]" {
		t.Fatalf("EventSource got %s, want 1..9 once each", got)
	}
}

// TestBrowserSSEFallback: behind a proxy that refuses WebSocket upgrades
// (403 on /ws), the JavaScript client falls back to SSE by itself, says so
// (pm.transport, the transport event, the demo page's label), receives
// messages, publishes over HTTP, reads history, and keeps its position:
// after the gateway restarts it resumes over SSE with nothing lost.
func TestBrowserSSEFallback(t *testing.T) {
	tab := newBrowser(t)
	t.Parallel()
	cfg := Config{Insecure: true}
	a := newGW(t, cfg, gwOptions{})
	a.applyConfig(t, `namespaces: [{match: "h.*", history_size: 1000}]`)
	b := a.another(t, cfg, "127.0.0.1:0")
	// The front: /ws refused, the rest to whichever gateway is current.
	cur := make(chan *Handler, 1)
	cur <- a.h
	handler := func() *Handler { h := <-cur; cur <- h; return h }
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	front := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/ws" {
			http.Error(w, "no WebSocket here", http.StatusForbidden)
			return
		}
		handler().ServeHTTP(w, r)
	})}
	go front.Serve(l)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := front.Shutdown(ctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
			t.Log(err)
		}
		front.Close()
	})
	frontURL := "http://" + l.Addr().String()

	if err := chromedp.Do(tab, chromedp.Navigate(frontURL+"/?channels=h.f")); err != nil {
		t.Fatalf("load the page: %v", err)
	}
	p := browserPage{t, tab}
	p.run("watch the page's client", `(window.got = [], window.log = [], window.transports = [],
		pubmesh.on('message', (m) => got.push(m.data.n + (m.recovered ? 'r' : ''))),
		pubmesh.on('transport', (t) => transports.push(t)),
		pubmesh.on('close', (e) => log.push('close ' + e.code)), 0)`)
	p.wait("the fallback", `pubmesh.transport === 'sse' && pubmesh.state === 'open' && pubmesh.isActive('h.f')`)
	if got := p.eval(`document.querySelector('#transport').textContent`); got != `"via SSE"` {
		t.Fatalf("the page shows the transport as %s", got)
	}
	p.run("publish from the page", `pubmesh.publish('h.f', {n: 1})`)
	p.wait("its own message", `window.got.length === 1`)
	if code, body := b.post(t, "/api/publish/h.f", "", []byte(`{"n":2}`)); code != 200 {
		t.Fatalf("publish: %d %v", code, body)
	}
	p.wait("a message from elsewhere", `window.got.length === 2`)
	p.run("read history", `pubmesh.history('h.f').then((h) => { window.hist = h.messages.map((m) => m.data.n); })`)
	if got := p.eval(`window.hist`); got != "[1,2]" {
		t.Fatalf("history over HTTP: %s", got)
	}

	// The gateway restarts on another address; the front turns to it.
	if err := a.gateway.Close(); err != nil {
		t.Fatal(err)
	}
	for i := 3; i <= 6; i++ {
		b.post(t, "/api/publish/h.f", "", []byte(fmt.Sprintf(`{"n":%d}`, i)))
	}
	a2 := a.another(t, cfg, "127.0.0.1:0")
	<-cur
	cur <- a2.h
	p.wait("the resume over SSE", `window.got.length === 6`)
	b.post(t, "/api/publish/h.f", "", []byte(`{"n":7}`))
	p.wait("live again", `window.got.length === 7`)
	time.Sleep(300 * time.Millisecond)
	if got := p.eval(`[window.got, pubmesh.transport, window.transports]`); got != `[["1","2","3r","4r","5r","6r","7"],"sse",["sse"]]` {
		t.Fatalf("got, transport, transports: %s\nlog: %s", got, p.eval("window.log"))
	}
}

// TestBrowserTokenRefresh: a page whose tokens live 3 seconds, with the
// JavaScript client's getToken, stays connected for several lifetimes: the
// client refreshes the token over the open WebSocket before each expiry
// (refresh op), never sees 4001, and keeps receiving.
func TestBrowserTokenRefresh(t *testing.T) {
	tab := newBrowser(t)
	t.Parallel()
	secret := []byte("refresh-browser-secret")
	g := newGW(t, Config{JWTSecret: secret, APIKeys: []string{"key"}}, gwOptions{})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	front := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/token" {
			tok, err := NewToken(secret, TokenOptions{Subject: "ann", Subscribe: []string{"*"}, TTL: 3 * time.Second})
			if err != nil {
				http.Error(w, err.Error(), 500)
				return
			}
			w.Write([]byte(tok))
			return
		}
		g.h.ServeHTTP(w, r)
	})}
	go front.Serve(l)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		front.Shutdown(ctx)
		front.Close()
	})
	frontURL := "http://" + l.Addr().String()
	if err := chromedp.Do(tab, chromedp.Navigate(frontURL+"/pubmesh.js")); err != nil {
		t.Fatalf("load the page: %v", err)
	}
	p := browserPage{t, tab}
	p.run("connect with getToken", `import('/pubmesh.js').then((M) => {
		window.log = []; window.got = []; window.tokens = 0; window.refreshed = 0;
		const pm = new M.PubMesh({ url: 'ws://' + location.host + '/ws', getToken: () => { tokens++; return fetch('/token').then((r) => r.text()); } });
		pm.on('close', (e) => log.push('close ' + e.code));
		pm.on('tokenExpired', () => log.push('tokenExpired'));
		pm.on('error', (e) => log.push('error ' + e.code));
		pm.on('refreshed', () => refreshed++);
		pm.on('message', (m) => got.push(m.data));
		window.pm = pm;
		return pm.subscribe('news');
	})`)
	// Publish for 8 s, almost three token lifetimes.
	n := 0
	for deadline := time.Now().Add(8 * time.Second); time.Now().Before(deadline); n++ {
		if code, body := g.post(t, "/api/publish/news", "key", []byte(fmt.Sprint(n))); code != 200 {
			t.Fatalf("publish: %d %v", code, body)
		}
		time.Sleep(500 * time.Millisecond)
	}
	p.wait("every message", fmt.Sprintf(`window.got.length === %d`, n))
	if got := p.eval(`[window.log, pm.state, pm.transport, window.refreshed >= 2, window.tokens >= 3]`); got != `[[],"open","websocket",true,true]` {
		t.Fatalf("log, state, transport, refreshed, tokens: %s", got)
	}
	if n := g.metric("refreshes", "ok"); n < 2 {
		t.Fatalf("refreshes ok = %v", n)
	}
}
