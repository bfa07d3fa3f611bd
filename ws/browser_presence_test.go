package ws

import (
	"testing"

	"github.com/chromedp/chromedp"
)

// TestBrowserPresence: two pages of the demo on one gateway whose
// namespaces have presence and join_leave (as `pubmesh dev` configures
// it), both on channel room. Page B lists itself (an initial presence
// read), then sees page A join (a join event) under the name A gave at
// connect (?info=), then leave when A's tab closes (a leave event). Then a
// client on the SSE fallback (its WebSocket URL answers 404) joins with its
// info, gets join events over SSE, reads presence over HTTP, and leaves.
func TestBrowserPresence(t *testing.T) {
	tabB := newBrowser(t)
	t.Parallel()
	g := newGW(t, Config{Insecure: true}, gwOptions{})
	g.applyConfig(t, `namespaces: [{match: "**", history_size: 100, presence: true, join_leave: true}]`)

	if err := chromedp.Do(tabB, chromedp.Navigate(g.url+"/?channels=room&name=Bob")); err != nil {
		t.Fatalf("load page B: %v", err)
	}
	b := browserPage{t, tabB}
	b.wait("B alone on room", `document.querySelectorAll('#presence li').length === 1 && !!document.querySelector('#presence li[data-name="Bob"]')`)
	// B's own join event may come after its presence read has listed it
	// (both are on their way when the page subscribes), so the watch
	// leaves B's own events out: only the others' are asserted.
	b.run("watch B's events", `(window.log = [], window.events = [],
		pubmesh.on('join', (e) => e.info.name !== 'Bob' && events.push('join ' + e.channel + ' ' + e.info.name)),
		pubmesh.on('leave', (e) => e.info.name !== 'Bob' && events.push('leave ' + e.channel + ' ' + e.info.name)), 0)`)

	tabA, closeA := chromedp.NewContext(tabB) // a second tab of the same browser
	defer closeA()
	if err := chromedp.Do(tabA, chromedp.Navigate(g.url+"/?channels=room&name=Alice")); err != nil {
		t.Fatalf("load page A: %v", err)
	}
	a := browserPage{t, tabA}
	a.wait("A sees both", `document.querySelectorAll('#presence li').length === 2`)
	b.wait("B sees A join", `!!document.querySelector('#presence li[data-name="Alice"]') && document.querySelectorAll('#presence li').length === 2`)
	if got := b.eval(`[document.querySelector('#presence-count').textContent, document.querySelector('#presence-channel').value, window.events]`); got != `["2 clients","room",["join room Alice"]]` {
		t.Fatalf("page B: %s", got)
	}
	// Over the presence op too: both listed with their info.
	b.run("read presence", `pubmesh.presence('room').then((l) => { window.names = l.map((e) => e.info.name).sort(); })`)
	if got := b.eval(`window.names`); got != `["Alice","Bob"]` {
		t.Fatalf("presence('room') names: %s", got)
	}

	// Closing A's tab closes its WebSocket: B gets A's leave.
	closeA()
	b.wait("B sees A leave", `document.querySelectorAll('#presence li').length === 1 && !document.querySelector('#presence li[data-name="Alice"]')`)
	if got := b.eval(`[document.querySelector('#presence-count').textContent, window.events]`); got != `["1 client",["join room Alice","leave room Alice"]]` {
		t.Fatalf("page B after A left: %s", got)
	}

	// A client on the SSE fallback, in page B.
	b.run("an SSE client joins", `(async () => {
		const { PubMesh } = await import('/pubmesh.js');
		const c = new PubMesh({ url: 'ws://' + location.host + '/nows', sseURL: location.origin + '/sse', minDelay: 20, maxDelay: 50, info: { name: 'Carol' } });
		window.carol = c; window.carolEvents = [];
		c.on('join', (e) => carolEvents.push('join ' + e.info.name));
		c.on('leave', (e) => carolEvents.push('leave ' + e.info.name));
		await c.subscribe('room');
	})()`)
	b.wait("B sees Carol join", `!!document.querySelector('#presence li[data-name="Carol"]')`)
	b.wait("Carol gets her own join over SSE", `window.carolEvents.length === 1`)
	b.run("Carol reads presence over HTTP", `Promise.all([carol.presence('room'), carol.presenceStats('room')]).then(([l, st]) => {
		window.carolRead = [carol.transport, l.map((e) => e.info.name).sort(), st];
	})`)
	if got := b.eval(`[window.carolRead, window.carolEvents]`); got != `[["sse",["Bob","Carol"],{"clients":2,"users":0}],["join Carol"]]` {
		t.Fatalf("SSE client: %s", got)
	}
	b.run("Carol leaves", `carol.close()`)
	b.wait("B sees Carol leave", `!document.querySelector('#presence li[data-name="Carol"]')`)
	if got := b.eval(`window.events`); got != `["join room Alice","leave room Alice","join room Carol","leave room Carol"]` {
		t.Fatalf("page B's events: %s", got)
	}
}
