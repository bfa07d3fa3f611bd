package ws

import (
	"context"
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

var updateDemoPNG = flag.Bool("update-demo-png", false, "write the browser test's screenshot to docs/demo.png")

// chromiumPath finds Debian's chromium (make test installs it), or the one
// named by PUBMESH_CHROMIUM.
func chromiumPath() string {
	if p := os.Getenv("PUBMESH_CHROMIUM"); p != "" {
		return p
	}
	for _, name := range []string{"/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	return ""
}

// newBrowser starts a headless Chromium for the life of the test and
// returns its tab, or skips the test when Chromium is not installed (and
// fails it under CI, where the browser tests must run).
func newBrowser(t *testing.T) context.Context {
	t.Helper()
	bin := chromiumPath()
	if bin == "" {
		if os.Getenv("CI") != "" {
			t.Fatal("chromium is not installed (apt-get install -y chromium); under CI the browser test must run")
		}
		t.Skip("chromium is not installed: skipping the browser test (apt-get install -y chromium; under CI it must run)")
	}
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(),
		chromedp.ExecPath(bin),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.Flag("hide-scrollbars", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1360, 820),
	)
	t.Cleanup(cancelAlloc)
	tab, cancelTab := chromedp.NewContext(allocCtx, chromedp.WithLogf(t.Logf))
	t.Cleanup(cancelTab)
	return tab
}

// pageStep returns a function that runs actions in tab, each call with
// its own 45 s deadline, and fails t with the page's text when they fail.
func pageStep(t *testing.T, tab context.Context) func(what string, actions ...chromedp.Action[chromedp.Void]) {
	return func(what string, actions ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		ctx, cancel := context.WithTimeout(tab, 45*time.Second)
		defer cancel()
		if err := chromedp.Do(ctx, actions...); err != nil {
			body, _ := chromedp.Run(tab, chromedp.Text(chromedp.CSS("body")))
			t.Fatalf("%s: %v\npage text:\n%s", what, err, body)
		}
	}
}

// TestBrowserDemo drives the demo page in a real headless Chromium: load
// /, subscribe, publish through the HTTP API and from the page, see the
// messages, survive a dropped connection (reconnect and re-subscribe), and
// take a screenshot.
func TestBrowserDemo(t *testing.T) {
	tab := newBrowser(t)
	t.Parallel()
	g := newGW(t, Config{Insecure: true}, gwOptions{})

	// The first call starts the browser, for the life of tab (no timeout on
	// it); each step then gets its own deadline.
	if err := chromedp.Do(tab, chromedp.Navigate(g.url+"/")); err != nil {
		t.Fatalf("load the page: %v", err)
	}
	step := pageStep(t, tab)
	text := func(sel string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(tab, 30*time.Second)
		defer cancel()
		s, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(sel)))
		if err != nil {
			t.Fatalf("text of %s: %v", sel, err)
		}
		return s
	}
	poll := func(expr string) chromedp.Action[chromedp.Void] {
		return chromedp.Poll[chromedp.Void](expr, chromedp.WithPollingTimeout(40*time.Second))
	}

	step("connect", chromedp.WaitVisible(chromedp.CSS("#state.open")))
	step("subscribe to news",
		chromedp.SetValue(chromedp.CSS("#channel-input"), "news"),
		chromedp.Click(chromedp.CSS("#subscribe-btn")),
		chromedp.WaitVisible(chromedp.CSS(`#channels .chip[data-channel="news"]:not(.pending)`)),
	)
	if code, body := g.post(t, "/api/publish/news", "", []byte(`{"hello":"from curl","n":1}`)); code != 200 {
		t.Fatalf("publish: %d %v", code, body)
	}
	step("see the message", chromedp.WaitVisible(chromedp.CSS(`#messages li.msg[data-channel="news"]`)))
	if got := text("#messages"); !strings.Contains(got, `"hello": "from curl"`) || !strings.Contains(got, " ms") {
		t.Fatalf("message list: %q", got)
	}

	step("publish from the page",
		chromedp.SetValue(chromedp.CSS("#publish-channel"), "news"),
		chromedp.SetValue(chromedp.CSS("#publish-data"), `{"text":"typed in the page"}`),
		chromedp.Click(chromedp.CSS("#publish-btn")),
		chromedp.WaitVisible(chromedp.CSS("#publish-result.ok")),
		poll(`document.querySelectorAll('#messages li.msg').length >= 2`),
	)
	if got := text("#messages"); !strings.Contains(got, "typed in the page") {
		t.Fatalf("message list after publishing from the page: %q", got)
	}
	step("see the node list", poll(`document.querySelector('#nodes').textContent.includes('ready')`))
	if got := text("#nodes"); !strings.Contains(got, "n0") {
		t.Fatalf("node list: %q", got)
	}

	// Drop the page's connection as a gateway restart would: the client
	// reconnects with backoff, re-subscribes, and gets the next message.
	g.h.mu.Lock()
	for c := range g.h.sessions {
		c.close(CloseGoingAway, "test: dropped")
	}
	g.h.mu.Unlock()
	step("reconnect",
		poll(`window.pubmesh.state !== 'open'`),
		chromedp.WaitVisible(chromedp.CSS("#state.open")),
		chromedp.WaitVisible(chromedp.CSS(`#channels .chip[data-channel="news"]:not(.pending)`)),
	)
	if code, body := g.post(t, "/api/publish/news", "", []byte(`{"after":"reconnect"}`)); code != 200 {
		t.Fatalf("publish: %d %v", code, body)
	}
	step("see the message after the reconnect", poll(`document.querySelector('#messages').textContent.includes('reconnect')`))

	// A second channel and a few more messages, so the screenshot shows a
	// live feed.
	step("subscribe to chat.room",
		chromedp.SetValue(chromedp.CSS("#channel-input"), "chat.room"),
		chromedp.Click(chromedp.CSS("#subscribe-btn")),
		chromedp.WaitVisible(chromedp.CSS(`#channels .chip[data-channel="chat.room"]:not(.pending)`)),
	)
	for i, m := range []struct{ ch, body string }{
		{"news", `{"headline":"Node n3 joined the cluster","nodes":4}`},
		{"chat.room", `{"from":"alice","text":"hi all"}`},
		{"news", `{"headline":"Gateway deployed","version":"0.1.0"}`},
		{"chat.room", `{"from":"bob","text":"hello alice"}`},
	} {
		if code, _ := g.post(t, "/api/publish/"+m.ch, "", []byte(m.body)); code != 200 {
			t.Fatalf("publish %d: %d", i, code)
		}
	}
	step("wait for the feed",
		poll(`document.querySelectorAll('#messages li.msg').length >= 7`),
		chromedp.EmulateViewport(1360, 820),
		chromedp.Sleep(1500*time.Millisecond), // let the new-row highlight fade
	)
	sctx, scancel := context.WithTimeout(tab, 30*time.Second)
	defer scancel()
	png, err := chromedp.Run(sctx, chromedp.CaptureScreenshot())
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	out := filepath.Join(t.TempDir(), "demo.png")
	if err := os.WriteFile(out, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s (%d bytes)", out, len(png))
	if *updateDemoPNG {
		if err := os.WriteFile(filepath.Join("..", "docs", "demo.png"), png, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
