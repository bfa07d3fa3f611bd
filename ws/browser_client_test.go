package ws

import (
	"context"
	"fmt"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/redis/go-redis/v9"

	"github.com/pubmesh/pubmesh/internal/tcpproxy"
)

// TestBrowserClient drives the JavaScript client (/pubmesh.js) in a real
// headless Chromium against real gateways (issue 10, item 13, and the
// browser's side of item 3):
//
//   - a subscribe that timed out is sent again until the gateway confirms;
//   - a transient error reply (unavailable) does not drop the channel;
//   - a ping without reply drops the socket at once, without waiting for
//     the close handshake of a half-open connection;
//   - close() then connect() during a token fetch opens one socket;
//   - after close 4001 a fixed token is not reused: 'tokenExpired' fires and
//     the client stops, while a token function is called for a fresh one;
//   - a message with invalid UTF-8 straight from Redis does not cut the
//     browser off.
func TestBrowserClient(t *testing.T) {
	tab := newBrowser(t)
	t.Parallel()
	// Gateway A: insecure; a subscribe through fanout gives up after 3 s,
	// so that one made while its redis-server is stopped gets no reply for
	// seconds; it pings rarely, so that only the client ends a half-open
	// connection.
	a := newGW(t, Config{Insecure: true, AllowOrigins: []string{"*"}, OpTimeout: 3 * time.Second, PingInterval: 10 * time.Minute}, gwOptions{nodes: -1})
	rsA := a.addNode(t, "n0")
	waitFor(t, 20*time.Second, "gateway A's fanout client to see its node", func() bool { return len(a.client.Nodes().Ready()) == 1 })
	t.Cleanup(func() { rsA.Signal(syscall.SIGCONT) })
	// A message round trip: the fanout client's connections to the node are
	// up, so that a stopped node is a node that stopped answering.
	warm := a.dial(t, "", nil)
	warm.mustOK(OpSubscribe, "warmup", nil)
	warm.mustOK(OpPublish, "warmup", 1)
	warm.message(20 * time.Second)
	warm.c.Close()
	// Gateway C's fanout client is closed: every subscribe gets
	// unavailable. Its clients come through proxy C, which is then turned
	// to gateway A.
	c := newGW(t, Config{Insecure: true, AllowOrigins: []string{"*"}}, gwOptions{})
	c.client.Close()
	proxyC := tcpproxy.New(t, c.url[len("http://"):])
	// Gateway B: tokens.
	secret := []byte("browser-secret")
	b := newGW(t, Config{JWTSecret: secret, APIKeys: []string{"backend-key"}, AllowOrigins: []string{"*"}}, gwOptions{})
	proxy := tcpproxy.New(t, a.url[len("http://"):])

	if err := chromedp.Do(tab, chromedp.Navigate(a.url+"/pubmesh.js")); err != nil {
		t.Fatalf("load the page: %v", err)
	}
	run := func(t *testing.T, what, script string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(tab, 30*time.Second)
		defer cancel()
		if err := chromedp.Do(ctx, chromedp.Evaluate[chromedp.Void](script, chromedp.EvalAwaitPromise)); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	eval := func(t *testing.T, expr string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(tab, 30*time.Second)
		defer cancel()
		v, err := chromedp.Run(ctx, chromedp.Evaluate[string]("JSON.stringify("+expr+")"))
		if err != nil {
			t.Fatalf("evaluate %s: %v", expr, err)
		}
		return v
	}
	wait := func(t *testing.T, what, cond string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(tab, 40*time.Second)
		defer cancel()
		if err := chromedp.Do(ctx, chromedp.Poll[chromedp.Void](cond, chromedp.WithPollingTimeout(40*time.Second))); err != nil {
			t.Fatalf("waiting for %s (%s): %v\nlog: %s", what, cond, err, eval(t, "window.log"))
		}
	}
	// publishUntil publishes to channel on g every half second until cond
	// holds in the page.
	publishUntil := func(t *testing.T, g *gw, bearer, channel, what, cond string) {
		t.Helper()
		deadline := time.Now().Add(40 * time.Second)
		for i := 0; ; i++ {
			g.post(t, "/api/publish/"+channel, bearer, []byte(fmt.Sprintf(`{"n":%d}`, i)))
			if eval(t, cond) == "true" {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: %s still false after publishing for 40s\nlog: %s", what, cond, eval(t, "window.log"))
			}
			time.Sleep(500 * time.Millisecond)
		}
	}
	run(t, "import the client", `import('/pubmesh.js').then((m) => {
		window.M = m;
		window.log = [];
		window.sockets = {};
		// counting(name) is a WebSocket class that counts the sockets a client opens.
		window.counting = (name) => class extends WebSocket {
			constructor(url, protocols) { super(url, protocols); sockets[name] = (sockets[name] || 0) + 1; }
		};
		window.track = (name, pm) => {
			pm.got = [];
			pm.events = [];
			pm.on('message', (m) => pm.got.push(m));
			pm.on('error', (e) => { pm.events.push('error:' + e.code); log.push(name + ' error ' + e.code + ': ' + e.message); });
			pm.on('close', (e) => { pm.events.push('close:' + e.code); log.push(name + ' close ' + e.code + ' ' + e.reason); });
			pm.on('state', (s) => { pm.events.push('state:' + s); log.push(name + ' ' + s); });
			pm.on('subscribed', (ch) => { pm.events.push('subscribed:' + ch); log.push(name + ' subscribed ' + ch); });
			pm.on('tokenExpired', (info) => { pm.events.push('tokenExpired:' + info.renew); log.push(name + ' tokenExpired ' + JSON.stringify(info)); });
			window[name] = pm;
			return pm;
		};
	})`)

	t.Run("subscribe retried after a timeout or unavailable", func(t *testing.T) {
		// A subscribe that times out in the client (after 1 s, while the
		// node is stopped) is tried again and gets messages once the node
		// is back. One that gets unavailable stays, and is subscribed again
		// (here after a reconnect, to a gateway that works).
		run(t, "connect A1 and A2", fmt.Sprintf(`
			track('A1', new M.PubMesh({url: %q, timeout: 1000, minDelay: 200, maxDelay: 1000}));
			track('A2', new M.PubMesh({url: 'ws://%s/ws', timeout: 10000, minDelay: 200, maxDelay: 1000}));`, a.wsURL, proxyC.Addr()))
		wait(t, "A1 and A2 open", `A1.state === 'open' && A2.state === 'open'`)
		if err := rsA.Signal(syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
		defer rsA.Signal(syscall.SIGCONT) // also when the subtest fails
		run(t, "subscribe while the node is stopped", `
			for (const [pm, ch] of [[A1, 'retry.timeout'], [A2, 'retry.unavailable']]) {
				pm.subscribe(ch).then(() => pm.events.push('subscribe resolved'), (e) => pm.events.push('subscribe rejected:' + e.code));
			}`)
		wait(t, "A1's subscribe to time out", `A1.events.includes('subscribe rejected:timeout')`)
		wait(t, "A2's subscribe to get unavailable", `A2.events.includes('error:unavailable')`)
		if got := eval(t, `A2.channels`); got != `["retry.unavailable"]` {
			t.Fatalf("A2's channels after unavailable: %s, want the channel kept", got)
		}
		if err := rsA.Signal(syscall.SIGCONT); err != nil {
			t.Fatal(err)
		}
		publishUntil(t, a, "", "retry.timeout", "a subscribe that timed out", `A1.got.length > 0 && A1.isActive('retry.timeout')`)
		proxyC.Redirect(a.url[len("http://"):])
		publishUntil(t, a, "", "retry.unavailable", "a subscribe refused with unavailable", `A2.got.length > 0 && A2.channels.includes('retry.unavailable')`)
	})

	t.Run("invalid UTF-8 from a node", func(t *testing.T) {
		// A message with invalid UTF-8 published straight to the node reaches
		// the browser as U+FFFD, and the connection stays (item 3).
		run(t, "A1 subscribes to utf8", `A1.subscribe('utf8')`)
		rdb := redis.NewClient(&redis.Options{Addr: a.client.Nodes().Ready()[0].Addr})
		t.Cleanup(func() { rdb.Close() })
		if err := rdb.Publish(context.Background(), "utf8", "{\"t\":\"\xff\xfe\"}").Err(); err != nil {
			t.Fatal(err)
		}
		if code, body := a.post(t, "/api/publish/utf8", "", []byte(`{"next":1}`)); code != 200 {
			t.Fatalf("publish: %d %v", code, body)
		}
		wait(t, "both utf8 messages", `A1.got.filter((m) => m.channel === 'utf8').length === 2`)
		if got := eval(t, `A1.got.filter((m) => m.channel === 'utf8').map((m) => m.data)`); got != `[{"t":"`+"\ufffd\ufffd"+`"},{"next":1}]` {
			t.Fatalf("utf8 messages: %s", got)
		}
		if ev := eval(t, `A1.events.filter((e) => e.startsWith('close'))`); ev != `[]` {
			t.Fatalf("A1 was disconnected: %s", ev)
		}
	})

	t.Run("ping timeout drops a half-open socket", func(t *testing.T) {
		// Half-open connection: the proxy stops passing bytes but keeps both
		// sockets open. The client's ping gets no reply within timeout, and it
		// drops the socket at once and reconnects (through the proxy, to a
		// fresh connection), rather than wait for a close handshake that
		// Chromium gives a minute.
		run(t, "connect P", fmt.Sprintf(`
			track('P', new M.PubMesh({url: 'ws://%s/ws', idle: 1000, timeout: 1000, minDelay: 200, maxDelay: 1000}));
			P.subscribe('half')`, proxy.Addr()))
		proxy.Freeze()
		wait(t, "P to drop the silent socket", `P.events.includes('close:4000')`)
		wait(t, "P to reconnect and re-subscribe", `P.state === 'open' && P.isActive('half')`)
		if n := proxy.Accepted(); n < 2 {
			t.Fatalf("proxy accepted %d connections, want a reconnect", n)
		}
		publishUntil(t, a, "", "half", "a message after the reconnect", `P.got.length > 0`)
	})

	t.Run("one socket per connect", func(t *testing.T) {
		// close() then connect() while the token is being fetched, and
		// connect() twice: one socket each.
		run(t, "connect D and E", fmt.Sprintf(`
			window.tokenWaiters = [];
			const fetchToken = () => new Promise((resolve) => tokenWaiters.push(resolve));
			track('D', new M.PubMesh({url: %[1]q, token: fetchToken, WebSocket: counting('D')}));
			D.close();
			D.connect();
			track('E', new M.PubMesh({url: %[1]q, token: fetchToken, WebSocket: counting('E')}));
			E.connect();
			for (const resolve of tokenWaiters) resolve('any');`, a.wsURL))
		wait(t, "D and E open", `D.state === 'open' && E.state === 'open'`)
		if got := eval(t, `sockets`); got != `{"D":1,"E":1}` {
			t.Fatalf("sockets opened: %s, want one for D and one for E", got)
		}
	})

	short := func(sub string) string { return token(t, secret, sub, []string{"*"}, nil, 2*time.Second) }
	long := token(t, secret, "carol", []string{"*"}, nil, time.Hour)
	t.Run("4001 with a fixed token", func(t *testing.T) {
		// Close 4001 with a fixed token: 'tokenExpired' (renew false), the
		// client stops instead of redialing with the expired token, and goes on
		// when the app gives it a new one.
		run(t, "connect F", fmt.Sprintf(`track('F', new M.PubMesh({url: %q, token: %q, minDelay: 100, maxDelay: 500, WebSocket: counting('F')}))`, b.wsURL, short("carol")))
		wait(t, "F's token to expire", `F.events.includes('tokenExpired:false')`)
		if got := eval(t, `[F.state, F.events.includes('close:4001')]`); got != `["closed",true]` {
			t.Fatalf("F after 4001 with a fixed token: %s, want closed", got)
		}
		time.Sleep(time.Second) // a retry would come within minDelay (100 ms)
		if got := eval(t, `[F.state, sockets.F]`); got != `["closed",1]` {
			t.Fatalf("F after 4001 with a fixed token: %s, want closed after 1 socket", got)
		}
		run(t, "give F a fresh token", fmt.Sprintf(`F.token = %q; F.connect()`, long))
		wait(t, "F open with the fresh token", `F.state === 'open'`)
	})

	t.Run("4001 with a token function", func(t *testing.T) {
		// With a token function, 4001 fetches a fresh one and the client
		// reconnects and re-subscribes by itself.
		run(t, "connect G", fmt.Sprintf(`
			window.gTokens = [%q, %q];
			track('G', new M.PubMesh({url: %q, token: () => gTokens.shift(), minDelay: 100, maxDelay: 500}));
			G.subscribe('news')`, short("dave"), long, b.wsURL))
		wait(t, "G's token to expire and be renewed", `G.events.includes('tokenExpired:true') && gTokens.length === 0 && G.state === 'open' && G.isActive('news')`)
		publishUntil(t, b, "backend-key", "news", "a message after the renewal", `G.got.length > 0`)
	})
	run(t, "close every client", `for (const name of ['A1', 'A2', 'P', 'D', 'E', 'F', 'G']) window[name]?.close()`)
}
