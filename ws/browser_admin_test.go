package ws

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/pubmesh/pubmesh/broker"
	"github.com/pubmesh/pubmesh/discovery"
	"github.com/pubmesh/pubmesh/internal/freeport"
	"github.com/pubmesh/pubmesh/pubmeshtest"
)

// startAgent runs a real node agent (its own redis-server) in g's
// cluster. Its drain holds until release is closed, so that a test sees
// the node draining before it leaves.
func startAgent(t *testing.T, g *gw, id string, release <-chan struct{}) *broker.Agent {
	t.Helper()
	var a *broker.Agent
	err := freeport.Use(func(port int) (err error) {
		a, err = broker.New(broker.Config{
			Registry: g.reg, ID: id, Port: port, JoinTimeout: 5 * time.Second, DrainTimeout: 30 * time.Second,
			DrainGate: func(ctx context.Context, _ discovery.Node) error {
				select {
				case <-release:
				case <-ctx.Done():
				}
				return nil
			},
			Logger: quietLogger().With("node", id),
		})
		return err
	}, func(err error) bool { return errors.Is(err, broker.ErrPortInUse) })
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- a.Run(context.Background()) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		a.Shutdown(ctx)
		<-done
	})
	select {
	case <-a.Ready():
	case err := <-done:
		done <- err
		t.Fatalf("node %s stopped before it was ready: %v", id, err)
	case <-time.After(30 * time.Second):
		t.Fatalf("node %s not ready after 30s", id)
	}
	return a
}

// TestBrowserAdmin drives the admin page in a real headless Chromium over
// a gateway with real node agents: without a login it shows the login
// form and no data (the API answers 401); a wrong password is refused;
// logged in, it lists the nodes with their Redis version and memory;
// draining a node shows it draining, then gone; the configuration editor
// previews a diff, applies it and shows the new revision, and an apply
// after somebody else's change is refused with the conflict message.
func TestBrowserAdmin(t *testing.T) {
	tab := newBrowser(t)
	t.Parallel()
	const password = "browser-admin-pw-83b1"
	g := newGW(t, Config{APIKeys: []string{"k"}, AdminPassword: []byte(password)}, gwOptions{nodes: -1})
	release := make(chan struct{})
	var once bool
	t.Cleanup(func() {
		if !once {
			close(release)
		}
	})
	a1 := startAgent(t, g, "na", release)
	startAgent(t, g, "nb", release)

	if err := chromedp.Do(tab, chromedp.Navigate(g.url+"/admin")); err != nil {
		t.Fatalf("load the page: %v", err)
	}
	step := pageStep(t, tab)
	eval := func(expr string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(tab, 30*time.Second)
		defer cancel()
		v, err := chromedp.Run(ctx, chromedp.Evaluate[string]("Promise.resolve("+expr+").then((v) => String(v))", chromedp.EvalAwaitPromise))
		if err != nil {
			t.Fatalf("evaluate %s: %v", expr, err)
		}
		return v
	}
	poll := func(expr string) chromedp.Action[chromedp.Void] {
		return chromedp.Poll[chromedp.Void](expr, chromedp.WithPollingTimeout(40*time.Second))
	}

	// Not logged in: the login form, no data, and the API refuses.
	step("see the login form", chromedp.WaitVisible(chromedp.CSS("#login-form")), poll(`document.body.dataset.state === 'login'`))
	if got := eval(`document.getElementById('app').classList.contains('hidden') && document.querySelectorAll('#nodes tr').length === 0`); got != "true" {
		t.Fatalf("before login the data part is shown or filled: %s", got)
	}
	if got := eval(`fetch('/admin/api/overview').then((r) => r.status)`); got != "401" {
		t.Fatalf("overview from the page before login: %s, want 401", got)
	}
	if got := eval(`document.body.textContent.includes('na')`); got == "true" && eval(`document.body.textContent.includes('127.0.0.1')`) == "true" {
		t.Fatalf("node data on the page before login")
	}

	step("a wrong password is refused",
		chromedp.SetValue(chromedp.CSS("#password"), "not-the-password"),
		chromedp.Click(chromedp.CSS("#login-btn")),
		poll(`document.getElementById('login-error').textContent.includes('wrong password')`),
	)
	step("log in",
		chromedp.SetValue(chromedp.CSS("#password"), password),
		chromedp.Click(chromedp.CSS("#login-btn")),
		chromedp.WaitVisible(chromedp.CSS("#app")),
		poll(`document.querySelectorAll('#nodes tr[data-node]').length === 2`),
	)
	redisVersion := a1.Node().RedisVersion
	if redisVersion == "" {
		t.Fatal("the agent registered no Redis version")
	}
	step("see the nodes with their Redis version and memory", poll(fmt.Sprintf(
		`['na','nb'].every((id) => { const r = document.querySelector('#nodes tr[data-node="' + id + '"]'); return r && r.dataset.state === 'ready' && r.textContent.includes(%q) && /\d(\.\d+)?[KMG]/.test(r.textContent); })`,
		redisVersion)))
	step("see this gateway and its fanout client", poll(fmt.Sprintf(
		`document.querySelector('#gateways tr[data-gateway=%q]') !== null && document.querySelector('#clients tr[data-client=%q]') !== null`,
		g.client.ID(), g.client.ID())))

	// Drain na: a first click arms the button, the second requests it.
	step("drain node na",
		chromedp.Click(chromedp.CSS(`#nodes button.drain[data-node="na"]`)),
		poll(`document.querySelector('#nodes button.drain[data-node="na"]').classList.contains('confirm')`),
		chromedp.Click(chromedp.CSS(`#nodes button.drain[data-node="na"]`)),
		poll(`document.getElementById('drain-result').textContent.includes('drain of node na requested')`),
		poll(`document.querySelector('#nodes tr[data-node="na"]')?.dataset.state === 'draining'`),
	)
	once = true
	close(release)
	step("see node na leave", poll(`document.querySelector('#nodes tr[data-node="na"]') === null && document.querySelector('#nodes tr[data-node="nb"]') !== null`))

	// Edit the configuration: preview shows the diff, apply writes it.
	step("preview a change",
		poll(`document.getElementById('config-rev').textContent === '0'`),
		chromedp.SetValue(chromedp.CSS("#config-doc"), "gateway:\n  max_subscriptions: 50\n"),
		chromedp.Click(chromedp.CSS("#config-preview")),
		poll(`document.getElementById('config-result').textContent.includes('~ gateway.max_subscriptions: 100 -> 50')`),
	)
	step("an invalid document shows its problems",
		chromedp.SetValue(chromedp.CSS("#config-doc"), "gateway:\n  max_subscriptions: lots\n"),
		chromedp.Click(chromedp.CSS("#config-preview")),
		poll(`document.getElementById('config-result').textContent.includes('not valid') && document.getElementById('config-result').textContent.includes('gateway.max_subscriptions')`),
	)
	step("apply a change",
		chromedp.SetValue(chromedp.CSS("#config-doc"), "gateway:\n  max_subscriptions: 50\n"),
		chromedp.Click(chromedp.CSS("#config-apply")),
		poll(`document.getElementById('config-result').textContent.includes('written (was 0)')`),
	)
	cur, err := g.reg.Config(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if cur.Doc.Gateway.MaxSubscriptions != 50 {
		t.Fatalf("after apply etcd holds max_subscriptions %d, want 50", cur.Doc.Gateway.MaxSubscriptions)
	}
	if got := eval(`document.getElementById('config-rev').textContent`); got != fmt.Sprint(cur.Revision) {
		t.Fatalf("the page edits revision %s, etcd has %d", got, cur.Revision)
	}
	if got := eval(`document.getElementById('config-result').textContent`); !strings.Contains(got, fmt.Sprintf("revision %d written", cur.Revision)) {
		t.Fatalf("apply result %q does not name revision %d", got, cur.Revision)
	}

	// A second writer changes it while the page edits: apply is refused.
	step("edit again", chromedp.SetValue(chromedp.CSS("#config-doc"), "gateway:\n  max_subscriptions: 60\n"))
	other := pubmeshtest.ApplyConfig(t, g.reg, "gateway:\n  max_subscriptions: 70\n")
	step("apply after somebody else's change",
		chromedp.Click(chromedp.CSS("#config-apply")),
		poll(fmt.Sprintf(`document.getElementById('config-result').textContent.includes('conflict: the configuration is at revision %d, not %d')`, other, cur.Revision)),
	)
	if now, err := g.reg.Config(context.Background()); err != nil || now.Doc.Gateway.MaxSubscriptions != 70 || now.Revision != other {
		t.Fatalf("after the refused apply etcd holds %+v (err %v), want the other writer's 70 at %d", now.Doc.Gateway, err, other)
	}
	step("reload shows the other writer's revision",
		chromedp.Click(chromedp.CSS("#config-reload")),
		poll(fmt.Sprintf(`document.getElementById('config-rev').textContent === '%d' && document.getElementById('config-doc').value.includes('70')`, other)),
	)
	step("the fanout client shows the new revision", poll(fmt.Sprintf(
		`document.querySelector('#clients tr[data-client=%q] td.rev')?.textContent === '%d'`, g.client.ID(), other)))

	step("log out", chromedp.Click(chromedp.CSS("#logout-btn")), chromedp.WaitVisible(chromedp.CSS("#login-form")))
}
