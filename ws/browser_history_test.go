package ws

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// TestBrowserHistoryClient drives the JavaScript client's history side in a
// real headless Chromium:
//
//   - history() reads a channel's history (limit, reverse, since);
//   - a reconnect whose gap history no longer covers fires 'recoveryFailed'
//     (not_recovered) with the count of what history still had, which
//     follows, marked recovered;
//   - a since the gateway refuses (not a position: bad_request; a channel
//     without history: no_history) fires 'recoveryFailed' with that code and
//     the channel is subscribed again without since, not dropped.
func TestBrowserHistoryClient(t *testing.T) {
	tab := newBrowser(t)
	t.Parallel()
	g := newGW(t, Config{Insecure: true}, gwOptions{})
	g.applyConfig(t, `namespaces: [{match: "h.*", history_size: 3}]`)
	publishRange(t, g, "h.a", 1, 5)

	if err := chromedp.Do(tab, chromedp.Navigate(g.url+"/pubmesh.js")); err != nil {
		t.Fatalf("load: %v", err)
	}
	run := func(what, script string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(tab, 30*time.Second)
		defer cancel()
		if err := chromedp.Do(ctx, chromedp.Evaluate[chromedp.Void](script, chromedp.EvalAwaitPromise)); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	eval := func(expr string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(tab, 30*time.Second)
		defer cancel()
		v, err := chromedp.Run(ctx, chromedp.Evaluate[string]("Promise.resolve("+expr+").then((v) => JSON.stringify(v))", chromedp.EvalAwaitPromise))
		if err != nil {
			t.Fatalf("evaluate %s: %v", expr, err)
		}
		return v
	}
	wait := func(what, cond string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(tab, 40*time.Second)
		defer cancel()
		if err := chromedp.Do(ctx, chromedp.Poll[chromedp.Void](cond, chromedp.WithPollingTimeout(40*time.Second))); err != nil {
			t.Fatalf("waiting for %s (%s): %v\nevents: %s", what, cond, err, eval("window.events"))
		}
	}
	run("connect", fmt.Sprintf(`import('/pubmesh.js').then((M) => {
		window.events = [];
		window.pm = new M.PubMesh({url: %q, minDelay: 100, maxDelay: 500});
		pm.on('message', (m) => events.push('message:' + m.channel + ':' + m.data + (m.recovered ? 'r' : '')));
		pm.on('recovered', (r) => events.push('recovered:' + r.channel + ':' + r.count));
		pm.on('recoveryFailed', (r) => events.push('recoveryFailed:' + r.channel + ':' + r.code + ':' + r.count));
		pm.on('subscribed', (ch) => events.push('subscribed:' + ch));
		pm.on('error', (e) => events.push('error:' + e.code));
	})`, g.wsURL))
	wait("open", `pm.state === 'open'`)

	// history(): what the namespace keeps (3), newest first, after a pos.
	if got := eval(`pm.history('h.a').then((h) => [h.messages.map((m) => m.data), h.recovered, typeof h.pos])`); got != `[[3,4,5],true,"string"]` {
		t.Fatalf("history: %s", got)
	}
	if got := eval(`pm.history('h.a', {limit: 2, reverse: true}).then((h) => h.messages.map((m) => m.data))`); got != `[5,4]` {
		t.Fatalf("history newest 2: %s", got)
	}
	if got := eval(`pm.history('h.a', {limit: 1}).then((h) => pm.history('h.a', {since: h.pos})).then((h) => h.messages.map((m) => m.data))`); got != `[4,5]` {
		t.Fatalf("history since the pos of the oldest: %s", got)
	}
	if got := eval(`pm.history('plain').then(() => 'resolved', (e) => e.code)`); got != `"no_history"` {
		t.Fatalf("history of a channel without: %s", got)
	}

	// A gap larger than history: recoveryFailed, then what history had.
	run("subscribe to h.t", `pm.subscribe('h.t')`)
	publishRange(t, g, "h.t", 1, 1)
	wait("message 1", `events.includes('message:h.t:1')`)
	run("go away", `pm.close()`)
	publishRange(t, g, "h.t", 2, 10)
	run("come back", `events.length = 0; pm.connect()`)
	wait("the failed recovery", `events.includes('message:h.t:10r')`)
	if got := eval(`events`); got != `["subscribed:h.t","recoveryFailed:h.t:not_recovered:3","message:h.t:8r","message:h.t:9r","message:h.t:10r"]` {
		t.Fatalf("events: %s", got)
	}

	// A since the gateway refuses: recoveryFailed with its code, then a
	// plain subscribe.
	run("resume from garbage and on a channel without history", `events.length = 0;
		pm.subscribe('h.bad', null, {since: 'garbage'});
		pm.subscribe('plain', null, {since: pm.position('h.t')})`)
	wait("both subscribed", `pm.isActive('h.bad') && pm.isActive('plain')`)
	if got := eval(`events.filter((e) => !e.startsWith('subscribed')).sort()`); got != `["recoveryFailed:h.bad:bad_request:0","recoveryFailed:plain:no_history:0"]` {
		t.Fatalf("events: %s", got)
	}
	if got := eval(`[pm.channels.sort(), typeof pm.position('h.bad'), pm.position('plain')]`); got != `[["h.bad","h.t","plain"],"string",null]` {
		t.Fatalf("channels and positions after refused resumes: %s", got)
	}
	run("close", `pm.close()`)
}
