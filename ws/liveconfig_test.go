package ws

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pubmesh/pubmesh/clusterconfig"
	"github.com/pubmesh/pubmesh/discovery"
	"github.com/pubmesh/pubmesh/pubmeshtest"
)

// setConfig writes doc (YAML) as the cluster configuration, compare-and-
// swap on the current revision as `pubmesh config` does, and returns the
// new revision. The gateway may not run it yet: see waitConfig.
func (g *gw) setConfig(t testing.TB, doc string) int64 {
	t.Helper()
	return pubmeshtest.ApplyConfig(t, g.reg, doc)
}

// applyConfig writes doc and waits until the gateway's fanout client runs it.
func (g *gw) applyConfig(t testing.TB, doc string) int64 {
	t.Helper()
	rev := g.setConfig(t, doc)
	waitFor(t, 5*time.Second, fmt.Sprintf("config revision %d", rev), func() bool { return g.client.ClusterConfig().Revision == rev })
	return rev
}

// TestEffectiveLimits: a Config field that is set wins over the cluster
// configuration, zero follows it; "no limit" is 0 in the document and
// negative in Config, and negative in the result.
func TestEffectiveLimits(t *testing.T) {
	t.Parallel()
	doc := func(y string) *clusterconfig.Document {
		d, err := clusterconfig.Parse([]byte(y))
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	def := clusterconfig.Defaults()
	for _, tc := range []struct {
		name string
		cfg  Config
		doc  *clusterconfig.Document
		want limits // rev and doc are not compared
	}{
		{"defaults", Config{}, def, limits{maxSubscriptions: 100, maxConnsPerSubject: 100, publishRate: 20, publishBurst: 40,
			sendQueue: 256, maxFrameBytes: 64 << 10, pingInterval: 25 * time.Second}},
		{"the document", Config{}, doc(`gateway: {max_subscriptions: 3, max_connections_per_subject: 4, publish_rate: 0.5, publish_burst: 6, send_queue: 7, max_frame_bytes: 1024, ping_interval: 2s}`),
			limits{maxSubscriptions: 3, maxConnsPerSubject: 4, publishRate: 0.5, publishBurst: 6, sendQueue: 7, maxFrameBytes: 1024, pingInterval: 2 * time.Second}},
		{"0 in the document is no limit", Config{}, doc(`gateway: {max_subscriptions: 0, max_connections_per_subject: 0, publish_rate: 0}`),
			limits{maxSubscriptions: -1, maxConnsPerSubject: -1, publishRate: -1, publishBurst: 40, sendQueue: 256, maxFrameBytes: 64 << 10, pingInterval: 25 * time.Second}},
		{"overrides win", Config{MaxSubscriptions: 9, MaxConnectionsPerSubject: 8, PublishRate: 7, PublishBurst: 6, SendQueue: 5, MaxFrameBytes: 4096, PingInterval: time.Minute, MaxPublishBytes: 100},
			doc(`gateway: {max_subscriptions: 0, max_connections_per_subject: 50, publish_rate: 0, send_queue: 70}`),
			limits{maxSubscriptions: 9, maxConnsPerSubject: 8, publishRate: 7, publishBurst: 6, sendQueue: 5, maxFrameBytes: 4096, pingInterval: time.Minute, publishBytes: 100}},
		{"negative overrides are no limit", Config{MaxSubscriptions: -1, MaxConnectionsPerSubject: -5, PublishRate: -1}, def,
			limits{maxSubscriptions: -1, maxConnsPerSubject: -1, publishRate: -1, publishBurst: 40, sendQueue: 256, maxFrameBytes: 64 << 10, pingInterval: 25 * time.Second}},
		{"an anonymous namespace", Config{}, doc(`namespaces: [{match: "a.*"}, {match: "pub.*", allow_publish: anonymous}]`),
			limits{maxSubscriptions: 100, maxConnsPerSubject: 100, publishRate: 20, publishBurst: 40, sendQueue: 256, maxFrameBytes: 64 << 10, pingInterval: 25 * time.Second, anonymous: true}},
		{"no anonymous namespace", Config{}, doc(`namespaces: [{match: "a.*", allow_subscribe: none, allow_publish: token}]`),
			limits{maxSubscriptions: 100, maxConnsPerSubject: 100, publishRate: 20, publishBurst: 40, sendQueue: 256, maxFrameBytes: 64 << 10, pingInterval: 25 * time.Second}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := effectiveLimits(&tc.cfg, discovery.AppliedConfig{Revision: 5, Doc: tc.doc})
			if got.rev != 5 || got.doc != tc.doc {
				t.Fatalf("revision %d, doc %p: want 5, %p", got.rev, got.doc, tc.doc)
			}
			got.rev, got.doc = 0, nil
			if *got != tc.want {
				t.Fatalf("got  %+v\nwant %+v", *got, tc.want)
			}
		})
	}
}

// The ws defaults (flags, docs) are the cluster configuration's, which a
// gateway without overrides applies.
func TestDefaultsAreTheClusterDefaults(t *testing.T) {
	t.Parallel()
	g, ns := clusterconfig.DefaultGateway, clusterconfig.DefaultNamespace
	for _, c := range []struct {
		name     string
		ws, conf any
	}{
		{"max_subscriptions", DefaultMaxSubscriptions, g.MaxSubscriptions},
		{"max_connections_per_subject", DefaultMaxConnectionsPerSubject, g.MaxConnectionsPerSubject},
		{"publish_rate", float64(DefaultPublishRate), g.PublishRate},
		{"publish_burst", DefaultPublishBurst, g.PublishBurst},
		{"send_queue", DefaultSendQueue, g.SendQueue},
		{"max_frame_bytes", DefaultMaxFrameBytes, g.MaxFrameBytes},
		{"ping_interval", DefaultPingInterval, time.Duration(g.PingInterval)},
		{"max_publish_bytes", DefaultMaxPublishBytes, ns.MaxPublishBytes},
	} {
		if c.ws != c.conf {
			t.Errorf("%s: ws default %v, cluster configuration default %v", c.name, c.ws, c.conf)
		}
	}
}

// TestLiveMaxSubscriptionsUnderLoad (issue 11): lowering
// gateway.max_subscriptions on a gateway whose clients receive a steady
// stream refuses the next subscribe above it within 1 s, while every
// existing subscription keeps receiving every message and no connection
// closes.
func TestLiveMaxSubscriptionsUnderLoad(t *testing.T) {
	t.Parallel()
	g := newGW(t, Config{Insecure: true}, gwOptions{})
	g.applyConfig(t, `gateway: {max_subscriptions: 10}`)
	channels := []string{"load.0", "load.1", "load.2"}
	const nConns = 3
	var conns []*wsClient
	for range nConns {
		c := g.dial(t, "", nil)
		for _, ch := range channels {
			c.mustOK(OpSubscribe, ch, nil)
		}
		conns = append(conns, c)
	}
	// conns[1:] read in goroutines, counting messages per channel, so that
	// they drain their sockets while conns[0] sends requests. A reader
	// stops once it has target messages; a ping's reply wakes it to check.
	type tally struct {
		n   map[string]int
		err error
	}
	tallies := make([]*tally, nConns)
	var target atomic.Int64
	target.Store(math.MaxInt64)
	var readers sync.WaitGroup
	for i := 1; i < nConns; i++ {
		tl := &tally{n: map[string]int{}}
		tallies[i] = tl
		readers.Add(1)
		go func(c *wsClient) {
			defer readers.Done()
			sum := 0
			for int64(sum) < target.Load() {
				f, err := c.read(20 * time.Second)
				if err != nil {
					tl.err = err
					return
				}
				if f.Op == OpMessage {
					tl.n[f.Channel]++
					sum++
				}
			}
		}(conns[i])
	}
	// A steady stream on every channel until stopped.
	ctx := context.Background()
	stopPublishing := make(chan struct{})
	published := make(chan int, 1)
	go func() {
		n := 0
		defer func() { published <- n }()
		for {
			select {
			case <-stopPublishing:
				return
			case <-time.After(5 * time.Millisecond):
			}
			for _, ch := range channels {
				if err := g.client.Publish(ctx, ch, []byte(fmt.Sprint(n))); err != nil {
					t.Errorf("publish: %v", err)
					return
				}
			}
			n++
		}
	}()
	time.Sleep(300 * time.Millisecond) // under load

	g.setConfig(t, `gateway: {max_subscriptions: 2}`)
	changed := time.Now()
	var refusedAfter time.Duration
	for i := 0; ; i++ {
		f := conns[0].request(OpSubscribe, fmt.Sprintf("extra.%d", i), nil)
		if f.Op == OpError {
			if f.Code != CodeLimit {
				t.Fatalf("subscribe: %+v, want ok or limit", f)
			}
			refusedAfter = time.Since(changed)
			break
		}
		if time.Since(changed) > 5*time.Second {
			t.Fatal("the lowered max_subscriptions was not applied within 5 s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("subscribe above the lowered limit refused %s after the write", refusedAfter)
	if refusedAfter > time.Second {
		t.Errorf("refused %s after the change, want within 1 s", refusedAfter)
	}
	// A new connection gets the new limit; its subscriptions work.
	fresh := g.dial(t, "", nil)
	fresh.mustOK(OpSubscribe, "load.0", nil)
	fresh.mustOK(OpSubscribe, "load.1", nil)
	if f := fresh.request(OpSubscribe, "load.2", nil); f.Code != CodeLimit {
		t.Fatalf("third subscribe of a new connection: %+v, want limit", f)
	}
	time.Sleep(300 * time.Millisecond) // more load after the change
	close(stopPublishing)
	n := <-published
	if n == 0 {
		t.Fatal("nothing published")
	}
	// Every existing subscription got every message, before and after.
	want := n * len(channels)
	target.Store(int64(want))
	for _, c := range conns[1:] {
		c.send(map[string]any{"op": OpPing}) // one writer beside the reader: allowed
	}
	got0 := map[string]int{}
	for total := 0; total < want; total++ {
		got0[conns[0].message(10*time.Second).Channel]++
	}
	readers.Wait()
	for i, tl := range tallies {
		m := got0
		if i > 0 {
			if tl.err != nil {
				t.Fatalf("connection %d failed: %v", i, tl.err)
			}
			m = tl.n
		}
		for _, ch := range channels {
			if m[ch] != n {
				t.Errorf("connection %d got %d messages on %s, want %d", i, m[ch], ch, n)
			}
		}
	}
	t.Logf("%d messages per channel, %d channels, %d connections", n, len(channels), nConns)
	if c := g.metric("connections"); c != nConns+1 {
		t.Errorf("%v connections open, want %d: one was closed", c, nConns+1)
	}
	conns[0].mustOK(OpPing, "", nil)
}

// TestLivePublishRateAndRollback: a lower publish rate and burst apply to
// the buckets that exist (a token subject's, shared with HTTP, and an API
// key connection's own); putting the earlier document back restores them.
func TestLivePublishRateAndRollback(t *testing.T) {
	t.Parallel()
	secret := []byte("s3cret")
	g := newGW(t, Config{JWTSecret: secret, APIKeys: []string{"backend-key"}}, gwOptions{})
	earlier := `gateway: {publish_rate: 20, publish_burst: 40}`
	g.applyConfig(t, earlier)
	alice := token(t, secret, "alice", nil, []string{"chat.*"}, time.Hour)
	conns := map[string]*wsClient{"token": g.dial(t, alice, nil), "API key": g.dial(t, "backend-key", nil)}
	burst := func(name string, c *wsClient, n int) (ok int) {
		t.Helper()
		for i := range n {
			switch f := c.request(OpPublish, "chat.room", i); {
			case f.Op == OpOK:
				ok++
			case f.Code != CodeRateLimited:
				t.Fatalf("%s: publish: %+v", name, f)
			}
		}
		return ok
	}
	for name, c := range conns {
		if ok := burst(name, c, 5); ok != 5 {
			t.Fatalf("%s: %d of 5 publishes accepted before the change", name, ok)
		}
	}
	g.applyConfig(t, `gateway: {publish_rate: 0.01, publish_burst: 2}`)
	for name, c := range conns {
		if ok := burst(name, c, 5); ok != 2 {
			t.Errorf("%s: %d of 5 publishes accepted after the change, want the new burst, 2", name, ok)
		}
	}
	if code, body := g.post(t, "/api/publish/chat.room", alice, []byte(`1`)); code != http.StatusTooManyRequests {
		t.Errorf("HTTP publish of the subject: %d %v, want 429", code, body)
	}
	// Rollback: the earlier document again. At 20/s the buckets refill.
	g.applyConfig(t, earlier)
	time.Sleep(time.Second)
	for name, c := range conns {
		if ok := burst(name, c, 10); ok != 10 {
			t.Errorf("%s: %d of 10 publishes accepted 1 s after the rollback, want 10", name, ok)
		}
	}
}

// TestNamespaceRules: allow_publish and allow_subscribe none refuse every
// client (API keys, an insecure gateway) over WebSocket and HTTP, with
// forbidden, and are counted; max_publish_bytes is per namespace; putting
// the earlier document back restores the earlier behaviour.
func TestNamespaceRules(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		cfg  Config
		cred string
	}{
		{"API key", Config{APIKeys: []string{"backend-key"}}, "backend-key"},
		{"insecure", Config{Insecure: true}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			g := newGW(t, tc.cfg, gwOptions{})
			earlier := `namespaces: [{match: "other.*"}]`
			g.applyConfig(t, earlier)
			c := g.dial(t, tc.cred, nil)
			big := strings.Repeat("x", 40) // 42 bytes of JSON
			works := func(when string) {
				t.Helper()
				c.mustOK(OpSubscribe, "locked.a", nil)
				c.mustOK(OpPublish, "locked.a", 1)
				c.mustOK(OpPublish, "small.a", big)
				if code, body := g.post(t, "/api/publish/locked.a", tc.cred, []byte(`1`)); code != http.StatusOK {
					t.Fatalf("%s: HTTP publish to locked.a: %d %v", when, code, body)
				}
				if code, body := g.post(t, "/api/publish/small.a", tc.cred, []byte(`"`+big+`"`)); code != http.StatusOK {
					t.Fatalf("%s: HTTP publish of 42 bytes to small.a: %d %v", when, code, body)
				}
			}
			works("before")
			c.mustOK(OpUnsubscribe, "locked.a", nil)

			g.applyConfig(t, `namespaces: [{match: "locked.*", allow_subscribe: none, allow_publish: none}, {match: "small.*", max_publish_bytes: 16}]`)
			expect := func(op, channel string, data any, code string) {
				t.Helper()
				if f := c.request(op, channel, data); f.Op != OpError || f.Code != code {
					t.Fatalf("%s %s: %+v, want %s", op, channel, f, code)
				}
			}
			expect(OpSubscribe, "locked.a", nil, CodeForbidden)
			expect(OpPublish, "locked.a", 1, CodeForbidden)
			expect(OpPublish, "small.a", big, CodeTooLarge)
			c.mustOK(OpPublish, "small.a", "short")
			c.mustOK(OpPublish, "other.a", big)
			c.mustOK(OpSubscribe, "other.a", nil)
			for _, p := range []struct {
				channel, body string
				want          int
			}{
				{"locked.a", `1`, http.StatusForbidden},
				{"small.a", `"` + big + `"`, http.StatusRequestEntityTooLarge},
				{"small.a", `"short"`, http.StatusOK},
				{"other.a", `"` + big + `"`, http.StatusOK},
			} {
				if code, body := g.post(t, "/api/publish/"+p.channel, tc.cred, []byte(p.body)); code != p.want {
					t.Fatalf("HTTP publish %s to %s: %d %v, want %d", p.body, p.channel, code, body, p.want)
				}
			}
			if n := g.metric("namespace_refusals", OpPublish); n != 2 {
				t.Errorf("namespace refusals of publishes counted %v, want 2", n)
			}
			if n := g.metric("namespace_refusals", OpSubscribe); n != 1 {
				t.Errorf("namespace refusals of subscribes counted %v, want 1", n)
			}

			g.applyConfig(t, earlier) // rollback
			works("after the rollback")
		})
	}
}

// TestOverridesWin: Config limits that are set win over the cluster
// configuration, are logged at start and listed by GET /api/config, which
// also shows the revision in force and counts bad revisions.
func TestOverridesWin(t *testing.T) {
	t.Parallel()
	var logs syncBuffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	g := newGW(t, Config{Insecure: true, MaxSubscriptions: 2, MaxPublishBytes: 100, Logger: log}, gwOptions{})
	for _, want := range []string{
		`level=INFO msg="config: flag overrides the cluster configuration" key=gateway.max_subscriptions value=2`,
		`level=INFO msg="config: flag overrides the cluster configuration" key=namespaces[*].max_publish_bytes value=100`,
	} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("log lacks %s:\n%s", want, logs.String())
		}
	}
	if n := strings.Count(logs.String(), "flag overrides"); n != 2 {
		t.Errorf("%d override lines, want 2", n)
	}
	rev := g.applyConfig(t, `{gateway: {max_subscriptions: 50}, namespaces: [{match: "small.*", max_publish_bytes: 16}]}`)
	c := g.dial(t, "", nil)
	c.mustOK(OpSubscribe, "a", nil)
	c.mustOK(OpSubscribe, "b", nil)
	if f := c.request(OpSubscribe, "c", nil); f.Code != CodeLimit {
		t.Fatalf("third subscribe: %+v, want limit (the override, 2)", f)
	}
	c.mustOK(OpPublish, "small.a", strings.Repeat("x", 60))

	var resp ConfigResponse
	getConfig := func() {
		t.Helper()
		r, err := http.Get(g.url + "/api/config") // no credential: open like /healthz
		if err != nil {
			t.Fatal(err)
		}
		defer r.Body.Close()
		resp = ConfigResponse{}
		if r.StatusCode != http.StatusOK || json.NewDecoder(r.Body).Decode(&resp) != nil {
			t.Fatalf("GET /api/config: %d", r.StatusCode)
		}
	}
	getConfig()
	doc, err := clusterconfig.Parse(resp.Document)
	if err != nil {
		t.Fatalf("document %s: %v", resp.Document, err)
	}
	if resp.Revision != rev || doc.Gateway.MaxSubscriptions != 50 || doc.Gateway.SendQueue != DefaultSendQueue || resp.InvalidRevisions != 0 {
		t.Errorf("revision %d (want %d), document %s, invalid %d", resp.Revision, rev, resp.Document, resp.InvalidRevisions)
	}
	want := map[string]any{"gateway.max_subscriptions": float64(2), "namespaces[*].max_publish_bytes": float64(100)}
	if fmt.Sprint(resp.Overrides) != fmt.Sprint(want) {
		t.Errorf("overrides %v, want %v", resp.Overrides, want)
	}
	// Garbage written behind pubmesh config's back is ignored and counted.
	key := discovery.DefaultPrefix + "/" + g.reg.Cluster() + "/config"
	if _, err := g.reg.Client().Put(context.Background(), key, "{not json"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the bad revision to be counted", func() bool { getConfig(); return resp.InvalidRevisions == 1 })
	if resp.Revision != rev {
		t.Errorf("revision %d after a bad write, want %d kept", resp.Revision, rev)
	}
	if f := c.request(OpSubscribe, "c", nil); f.Code != CodeLimit {
		t.Fatalf("subscribe after a bad write: %+v, want limit", f)
	}
}

// TestLiveConnectionSettings: max_connections_per_subject applies at the
// next connection (open ones stay); max_frame_bytes, send_queue and
// ping_interval apply to connections opened after the change.
func TestLiveConnectionSettings(t *testing.T) {
	t.Parallel()
	secret := []byte("s3cret")
	g := newGW(t, Config{JWTSecret: secret}, gwOptions{})
	alice := token(t, secret, "alice", []string{"*"}, nil, time.Hour)
	bob := token(t, secret, "bob", []string{"*"}, nil, time.Hour)
	old := []*wsClient{g.dial(t, alice, nil), g.dial(t, alice, nil), g.dial(t, alice, nil)}
	g.applyConfig(t, `gateway: {max_connections_per_subject: 2, max_frame_bytes: 1024, send_queue: 8, ping_interval: 3s}`)
	if c, resp, err := g.tryDial(alice, nil); err == nil {
		c.Close()
		t.Fatal("a 4th connection of alice was accepted with max_connections_per_subject 2")
	} else if resp == nil || resp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("4th connection of alice: %v, want HTTP 429", err)
	}
	for _, c := range old {
		c.mustOK(OpSubscribe, "news", nil) // still open and working
	}
	fresh := g.dial(t, bob, nil)
	fresh.mustOK(OpPing, "", nil)
	// The settings of each connection, as it was opened.
	g.h.mu.Lock()
	for c := range g.h.sessions {
		wantQ, wantFrame, wantPing := DefaultSendQueue, DefaultMaxFrameBytes, DefaultPingInterval
		if c.principal().Subject == "bob" {
			wantQ, wantFrame, wantPing = 8, 1024, 3*time.Second
		}
		if c.queue.limit != wantQ || c.maxFrameBytes != wantFrame || c.pingInterval != wantPing {
			t.Errorf("%s's connection: queue %d, frames %d, ping %s; want %d, %d, %s", c.principal().Subject,
				c.queue.limit, c.maxFrameBytes, c.pingInterval, wantQ, wantFrame, wantPing)
		}
	}
	g.h.mu.Unlock()
	pad := `{"op":"ping","id":1,"pad":"` + strings.Repeat("x", 2000) + `"}`
	old[0].send(pad)
	old[0].next(10*time.Second, func(f frame) bool { return f.Op == OpOK })
	fresh.send(pad)
	if ce := fresh.closeErr(10 * time.Second); ce.Code != CloseTooBig {
		t.Fatalf("a new connection's 2000-byte frame: close %d, want %d", ce.Code, CloseTooBig)
	}
}

// syncBuffer is a bytes.Buffer for a logger that goroutines share.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
