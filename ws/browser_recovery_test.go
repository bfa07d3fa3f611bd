package ws

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// TestBrowserRecovery: the demo page in a real headless Chromium loses its
// gateway (stopped, 1001), messages are published meanwhile through
// another gateway, a new gateway comes back on the same address, and the
// page shows every message exactly once, in order, with "recovered N
// messages" per channel: on news it resumes from the last message's pos,
// on quiet (no message before) from the pos of the subscribe's ok. Then
// live messages flow again.
func TestBrowserRecovery(t *testing.T) {
	tab := newBrowser(t)
	t.Parallel()
	cfg := Config{Insecure: true}
	a := newGW(t, cfg, gwOptions{})
	a.applyConfig(t, `namespaces: [{match: "**", history_size: 1000}]`)
	b := a.another(t, cfg, "127.0.0.1:0") // the publishers' gateway
	addr := strings.TrimPrefix(a.url, "http://")

	if err := chromedp.Do(tab, chromedp.Navigate(a.url+"/?channels=news,quiet")); err != nil {
		t.Fatalf("load the page: %v", err)
	}
	eval := func(expr string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(tab, 30*time.Second)
		defer cancel()
		v, err := chromedp.Run(ctx, chromedp.Evaluate[string]("JSON.stringify("+expr+")"))
		if err != nil {
			t.Fatalf("evaluate %s: %v", expr, err)
		}
		return v
	}
	step := func(what string, actions ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		ctx, cancel := context.WithTimeout(tab, 45*time.Second)
		defer cancel()
		if err := chromedp.Do(ctx, actions...); err != nil {
			t.Fatalf("%s: %v\ngot: %s\nrecovery: %s", what, err, eval("window.got"), eval("document.querySelector('#recovery').textContent"))
		}
	}
	poll := func(expr string) chromedp.Action[chromedp.Void] {
		return chromedp.Poll[chromedp.Void](expr, chromedp.WithPollingTimeout(40*time.Second))
	}
	// What the page's client delivers, as channel:n, r for recovered.
	eval(`(window.got = [], window.recoveries = [], pubmesh.on('message', (m) => got.push(m.channel + ':' + m.data.n + (m.recovered ? 'r' : ''))),
		pubmesh.on('recovered', (r) => recoveries.push(r.channel + ':' + r.count)),
		pubmesh.on('recoveryFailed', (r) => recoveries.push(r.channel + ':failed:' + r.code)), 0)`)
	step("subscribe to news and quiet",
		chromedp.WaitVisible(chromedp.CSS(`#channels .chip[data-channel="news"]:not(.pending)`)),
		chromedp.WaitVisible(chromedp.CSS(`#channels .chip[data-channel="quiet"]:not(.pending)`)),
	)
	publish := func(g *gw, channel string, from, to int) {
		t.Helper()
		for i := from; i <= to; i++ {
			if code, body := g.post(t, "/api/publish/"+channel, "", []byte(fmt.Sprintf(`{"n":%d}`, i))); code != 200 {
				t.Fatalf("publish %s %d: %d %v", channel, i, code, body)
			}
		}
	}
	publish(b, "news", 1, 2)
	step("see the first two", poll(`window.got.length === 2`))

	// The gateway stops; 10 messages on news and 2 on quiet are published
	// through the other one; a new gateway starts on the same address.
	if err := a.gateway.Close(); err != nil {
		t.Fatal(err)
	}
	step("the page sees its gateway gone", poll(`pubmesh.state !== 'open'`))
	publish(b, "news", 3, 12)
	publish(b, "quiet", 1, 2)
	a.another(t, cfg, addr)
	step("recover",
		chromedp.WaitVisible(chromedp.CSS("#state.open")),
		chromedp.WaitVisible(chromedp.CSS(`#recovery .ok[data-channel="news"]`)),
		chromedp.WaitVisible(chromedp.CSS(`#recovery .ok[data-channel="quiet"]`)),
		poll(`window.got.length === 14`),
	)
	if got := eval(`document.querySelector('#recovery').textContent`); !strings.Contains(got, "recovered 10 messages on news") ||
		!strings.Contains(got, "recovered 2 messages on quiet") {
		t.Fatalf("the page says %s", got)
	}
	publish(b, "news", 13, 13)
	step("live again", poll(`window.got.length === 15`))
	time.Sleep(300 * time.Millisecond) // room for a duplicate to show
	// Per channel: every message once, in order, those published during
	// the outage marked recovered.
	news := []string{"news:1", "news:2"}
	for i := 3; i <= 12; i++ {
		news = append(news, fmt.Sprintf("news:%dr", i))
	}
	news = append(news, "news:13")
	for ch, want := range map[string][]string{"news": news, "quiet": {"quiet:1r", "quiet:2r"}} {
		w, _ := json.Marshal(want)
		if got := eval(`window.got.filter((x) => x.startsWith('` + ch + `:'))`); got != string(w) {
			t.Errorf("%s delivered %s\nwant %s", ch, got, w)
		}
	}
	if got := eval(`[window.recoveries.sort(), document.querySelectorAll('#messages li.msg').length, document.querySelectorAll('#messages li.recovered').length]`); got != `[["news:10","quiet:2"],15,12]` {
		t.Fatalf("recoveries, rows, recovered rows: %s", got)
	}
}
