package chaos

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/golang-jwt/jwt/v5"
	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/redis/go-redis/v9"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/pubmesh/pubmesh/broker"
	"github.com/pubmesh/pubmesh/discovery"
	"github.com/pubmesh/pubmesh/fanout"
	"github.com/pubmesh/pubmesh/internal/embedetcd"
	"github.com/pubmesh/pubmesh/internal/freeport"
	"github.com/pubmesh/pubmesh/internal/testredis"
	"github.com/pubmesh/pubmesh/ws"
)

// The bad-input suite runs every entry point in this process (the gateway
// as a ws.Handler on a real listener, fanout clients, node agents), so
// that TestMain's goleak check covers what they leave behind. The ws
// package's own tests cover most frames and the common token cases; these
// tables cover the rest and the entry points ws does not have: etcd
// values, and servers that are not Redis.

// badRow is one bad input and what came of it.
type badRow struct {
	entry, input, outcome string
}

var badRows struct {
	mu   sync.Mutex
	rows []badRow
}

func recordBad(entry, input, outcome string) {
	badRows.mu.Lock()
	defer badRows.mu.Unlock()
	badRows.rows = append(badRows.rows, badRow{entry, input, outcome})
}

// logCapture is a slog handler that keeps the records, for checking that
// an input that is ignored is logged.
type logCapture struct {
	mu   sync.Mutex
	recs []string
}

func (l *logCapture) Enabled(context.Context, slog.Level) bool { return true }
func (l *logCapture) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	b.WriteString(r.Level.String() + " " + r.Message)
	r.Attrs(func(a slog.Attr) bool { b.WriteString(" " + a.String()); return true })
	l.mu.Lock()
	l.recs = append(l.recs, b.String())
	l.mu.Unlock()
	return nil
}
func (l *logCapture) WithAttrs(attrs []slog.Attr) slog.Handler { return l }
func (l *logCapture) WithGroup(string) slog.Handler            { return l }

// has reports whether a record at level warn or above contains all of
// words.
func (l *logCapture) has(words ...string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, r := range l.recs {
		if !strings.HasPrefix(r, "WARN") && !strings.HasPrefix(r, "ERROR") {
			continue
		}
		ok := true
		for _, w := range words {
			ok = ok && strings.Contains(r, w)
		}
		if ok {
			return true
		}
	}
	return false
}

// metric sums the values of a metric family (counter or gauge) in reg whose
// labels include labels ("k=v").
func metric(reg *prometheus.Registry, name string, labels ...string) float64 {
	mfs, err := reg.Gather()
	if err != nil {
		return -1
	}
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			for _, want := range labels {
				k, v, _ := strings.Cut(want, "=")
				found := false
				for _, lp := range m.GetLabel() {
					found = found || (lp.GetName() == k && lp.GetValue() == v)
				}
				if !found {
					continue next
				}
			}
			sum += value(m)
		}
	}
	return sum
}

func value(m *dto.Metric) float64 {
	switch {
	case m.Counter != nil:
		return m.Counter.GetValue()
	case m.Gauge != nil:
		return m.Gauge.GetValue()
	}
	return 0
}

// badEnv is a small real cluster in this process: an embedded etcd, real
// redis-servers registered as ready, a fanout client and a gateway with
// JWT and API-key authentication.
type badEnv struct {
	t       *testing.T
	etcd    *embedetcd.Server
	cli     *clientv3.Client
	reg     *discovery.Registry
	cluster string
	secret  []byte
	apiKey  string
	metrics *prometheus.Registry
	logs    *logCapture
	client  *fanout.Client
	h       *ws.Handler
	addr    string
	redis   *testredis.Server // the first node
}

func newBadEnv(t *testing.T, cfg ws.Config) *badEnv {
	t.Helper()
	srv, err := embedetcd.Start(embedetcd.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cli, err := discovery.Dial(ctx, discovery.EtcdConfig{Endpoints: []string{srv.Endpoint()}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	e := &badEnv{t: t, etcd: srv, cli: cli, cluster: fmt.Sprintf("bad-%d", clusterSeq.Add(1)),
		secret: []byte("chaos-secret"), apiKey: "chaos-api-key", metrics: prometheus.NewRegistry(), logs: &logCapture{}}
	e.reg, err = discovery.New(cli, discovery.Config{Cluster: e.cluster, Logger: testLog()})
	if err != nil {
		t.Fatal(err)
	}
	e.redis = e.node("real1")
	cfg.JWTSecret, cfg.APIKeys, cfg.Metrics, cfg.Logger = e.secret, []string{e.apiKey}, e.metrics, slog.New(e.logs)
	// Built as `pubmesh gateway` builds it.
	gw, err := ws.StartGateway(ctx, ws.GatewayConfig{
		Fanout:  fanout.Config{EtcdClient: cli, Cluster: e.cluster},
		Handler: cfg,
		Listen:  "127.0.0.1:0",
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := gw.Close(); err != nil {
			t.Errorf("gateway Close: %v", err)
		}
	})
	e.client, e.h = gw.Client(), gw.Handler()
	e.addr = strings.TrimSuffix(strings.TrimPrefix(gw.URL(), "http://"), "/")
	waitUntil(t, within, "a ready node", func() bool { return len(e.client.Nodes().Ready()) > 0 })
	return e
}

// node starts a redis-server and registers it ready under a lease.
func (e *badEnv) node(id string) *testredis.Server {
	e.t.Helper()
	rs := testredis.New(e.t)
	e.register(id, rs.Addr)
	return rs
}

// register registers addr as a ready node, as a node agent would, until
// the test ends.
func (e *badEnv) register(id, addr string) {
	e.t.Helper()
	g, err := e.reg.Register(context.Background(), discovery.Node{
		ID: id, Addr: addr, State: discovery.StateReady, StartedAt: time.Now(), Version: "test", RunID: id,
	}, discovery.RegisterOptions{TTL: 2 * time.Second})
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		g.Close(ctx)
	})
}

func (e *badEnv) fanout(reg prometheus.Registerer, log *slog.Logger) *fanout.Client {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := fanout.New(ctx, fanout.Config{EtcdClient: e.cli, Cluster: e.cluster, Registerer: reg, Logger: log, Overflow: fanout.Block})
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { c.Close() })
	return c
}

func (e *badEnv) token(claims jwt.Claims, method jwt.SigningMethod, key any) string {
	e.t.Helper()
	s, err := jwt.NewWithClaims(method, claims).SignedString(key)
	if err != nil {
		e.t.Fatal(err)
	}
	return s
}

// dial opens a WebSocket with the API key.
func (e *badEnv) dial() *websocket.Conn {
	e.t.Helper()
	d := websocket.Dialer{HandshakeTimeout: 10 * time.Second}
	c, resp, err := d.Dial("ws://"+e.addr+"/ws", http.Header{"Authorization": {"Bearer " + e.apiKey}})
	if resp != nil && resp.Body != nil {
		resp.Body.Close()
	}
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { c.Close() })
	return c
}

type wsFrame struct {
	Op      string          `json:"op"`
	ID      json.RawMessage `json:"id"`
	Code    string          `json:"code"`
	Message string          `json:"message"`
}

// reply reads frames until a reply (not a message) comes, or the socket
// ends (then it returns the close code in Code, Op "close").
func reply(c *websocket.Conn, within time.Duration) wsFrame {
	deadline := time.Now().Add(within)
	for {
		c.SetReadDeadline(deadline)
		_, b, err := c.ReadMessage()
		if err != nil {
			if ce, ok := err.(*websocket.CloseError); ok {
				return wsFrame{Op: "close", Code: fmt.Sprint(ce.Code), Message: ce.Text}
			}
			return wsFrame{Op: "error-read", Message: err.Error()}
		}
		var f wsFrame
		if json.Unmarshal(b, &f) != nil || f.Op == "message" {
			continue
		}
		return f
	}
}

func TestBadInputWebSocket(t *testing.T) {
	t.Parallel()
	e := newBadEnv(t, ws.Config{MaxSubscriptions: 3, MaxFrameBytes: 64 << 10})
	deep := `{"op":"publish","channel":"x","data":` + strings.Repeat("[", 20000) + strings.Repeat("]", 20000) + `}`
	for _, tc := range []struct {
		name  string
		frame []byte
		code  string // error code, or a close code
	}{
		{"malformed JSON", []byte(`{"op":"subscribe","channel":`), ws.CodeBadRequest},
		{"unknown op", []byte(`{"op":"drop_tables","id":1}`), ws.CodeBadRequest},
		{"invalid UTF-8", []byte("{\"op\":\"subscribe\",\"channel\":\"a\xff\xfe\",\"id\":1}"), ws.CodeBadRequest},
		{"publish data with invalid UTF-8 in a string", []byte("{\"op\":\"publish\",\"channel\":\"x\",\"data\":{\"t\":\"\xff\xfe\"},\"id\":1}"), ws.CodeBadRequest},
		{"empty channel", []byte(`{"op":"subscribe","channel":"","id":1}`), ws.CodeBadRequest},
		{"channel of 129 bytes", []byte(`{"op":"subscribe","channel":"` + strings.Repeat("a", 129) + `","id":1}`), ws.CodeBadRequest},
		{"channel with a control character", []byte(`{"op":"subscribe","channel":"a\u0007b","id":1}`), ws.CodeBadRequest},
		{"channel with a newline", []byte(`{"op":"publish","channel":"a\nb","data":1,"id":1}`), ws.CodeBadRequest},
		{"data nested 20000 deep", []byte(deep), ws.CodeBadRequest},
		{"id of 100 bytes", []byte(`{"op":"ping","id":"` + strings.Repeat("i", 100) + `"}`), ws.CodeBadRequest},
		{"frame of 65 KiB", []byte(`{"op":"ping","pad":"` + strings.Repeat("x", 65<<10) + `"}`), "1009"},
	} {
		c := e.dial()
		c.SetWriteDeadline(time.Now().Add(10 * time.Second))
		if err := c.WriteMessage(websocket.TextMessage, tc.frame); err != nil {
			t.Fatalf("%s: write: %v", tc.name, err)
		}
		f := reply(c, 10*time.Second)
		got := f.Code
		if got != tc.code {
			t.Errorf("%s: got %+v, want %s", tc.name, f, tc.code)
			continue
		}
		outcome := fmt.Sprintf("error `%s`: %s", f.Code, f.Message)
		if f.Op == "close" {
			outcome = "connection closed with " + f.Code
		} else {
			// An error frame never ends the connection.
			c.WriteMessage(websocket.TextMessage, []byte(`{"op":"ping","id":"after"}`))
			if f := reply(c, 10*time.Second); f.Op != "ok" {
				t.Errorf("%s: connection unusable afterwards: %+v", tc.name, f)
			}
			outcome += "; the connection goes on"
		}
		recordBad("WebSocket frame", tc.name, outcome)
	}
	if n := metric(e.metrics, "pubmesh_ws_errors_total", "code=bad_request"); n < 9 {
		t.Errorf("pubmesh_ws_errors_total{code=bad_request} = %v, want at least 9", n)
	}

	// Invalid UTF-8 that reaches a node anyway (a raw PUBLISH) goes out as
	// valid UTF-8, with U+FFFD, and costs no subscriber its connection nor
	// the next message; the HTTP publish path refuses it (400).
	const subs = 5
	var conns []*websocket.Conn
	for range subs {
		c := e.dial()
		c.WriteMessage(websocket.TextMessage, []byte(`{"op":"subscribe","channel":"utf8","id":1}`))
		if f := reply(c, 10*time.Second); f.Op != "ok" {
			t.Fatalf("subscribe utf8: %+v", f)
		}
		conns = append(conns, c)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := e.client.Publish(ctx, "utf8", []byte(`{"n":1}`)); err != nil {
		t.Fatal(err)
	}
	rdb := redis.NewClient(&redis.Options{Addr: e.redis.Addr})
	defer rdb.Close()
	if err := rdb.Publish(ctx, "utf8", "{\"t\":\"\xff\xfe\"}").Err(); err != nil {
		t.Fatal(err)
	}
	if err := e.client.Publish(ctx, "utf8", []byte(`{"n":2}`)); err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest(http.MethodPost, "http://"+e.addr+"/api/publish/utf8", strings.NewReader("{\"t\":\"\xff\xfe\"}"))
	req.Header.Set("Authorization", "Bearer "+e.apiKey)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("HTTP publish with invalid UTF-8: %s, want 400", resp.Status)
	}
	delivered := 0
	for i, c := range conns {
		var got []string
		c.SetReadDeadline(time.Now().Add(20 * time.Second))
		for len(got) < 3 {
			_, b, err := c.ReadMessage()
			if err != nil {
				t.Fatalf("subscriber %d after %d messages: %v", i, len(got), err)
			}
			if !utf8.Valid(b) || !json.Valid(b) {
				t.Fatalf("subscriber %d got a frame that is not valid UTF-8 JSON: %q", i, b)
			}
			var f struct {
				Op   string          `json:"op"`
				Data json.RawMessage `json:"data"`
			}
			json.Unmarshal(b, &f)
			if f.Op == "message" {
				got = append(got, string(f.Data))
			}
		}
		var bad struct{ T string }
		json.Unmarshal([]byte(got[1]), &bad)
		if got[0] != `{"n":1}` || !strings.ContainsRune(bad.T, utf8.RuneError) || got[2] != `{"n":2}` {
			t.Errorf("subscriber %d got %q", i, got)
		}
		delivered += len(got)
	}
	recordBad("node data", "invalid UTF-8 published raw to a node (redis-cli PUBLISH)",
		fmt.Sprintf("%d subscribers got %d of %d messages, the bad one as valid UTF-8 with U+FFFD, and kept their connections; the same body over HTTP: 400 `bad_request`", subs, delivered, 3*subs))

	// Too many subscriptions: the fourth is refused, the three stay.
	c := e.dial()
	for i := range 4 {
		c.WriteMessage(websocket.TextMessage, fmt.Appendf(nil, `{"op":"subscribe","channel":"s%d","id":%d}`, i, i))
		f := reply(c, 10*time.Second)
		if want := "ok"; i == 3 {
			if f.Code != ws.CodeLimit {
				t.Errorf("fourth subscription: %+v, want %s", f, ws.CodeLimit)
			} else {
				recordBad("WebSocket frame", "a fourth subscription (limit 3)", fmt.Sprintf("error `%s`: %s", f.Code, f.Message))
			}
		} else if f.Op != want {
			t.Errorf("subscription %d: %+v", i, f)
		}
	}

	// A publish flood: 2000 publishes as fast as the socket takes them.
	// The first burst is accepted, the rest refused with rate_limited, and
	// the connection survives.
	c = e.dial()
	go func() {
		var b bytes.Buffer
		for i := range 2000 {
			b.Reset()
			fmt.Fprintf(&b, `{"op":"publish","channel":"flood","data":%d,"id":%d}`, i, i)
			c.SetWriteDeadline(time.Now().Add(10 * time.Second))
			if c.WriteMessage(websocket.TextMessage, b.Bytes()) != nil {
				return
			}
		}
	}()
	ok, limited := 0, 0
	for ok+limited < 2000 {
		f := reply(c, 20*time.Second)
		switch {
		case f.Op == "ok":
			ok++
		case f.Code == ws.CodeRateLimited:
			limited++
		default:
			t.Fatalf("publish flood: %+v after %d ok, %d rate_limited", f, ok, limited)
		}
	}
	if ok > 100 || limited < 1800 {
		t.Errorf("publish flood: %d accepted, %d rate_limited", ok, limited)
	}
	recordBad("WebSocket frame", "a flood of 2000 publishes", fmt.Sprintf("%d accepted (burst 40, 20/s), %d refused with `rate_limited`; the connection goes on", ok, limited))
	if n := metric(e.metrics, "pubmesh_ws_errors_total", "code=rate_limited"); n < float64(limited) {
		t.Errorf("pubmesh_ws_errors_total{code=rate_limited} = %v, want %d", n, limited)
	}
}

func TestBadInputTokensAndHTTP(t *testing.T) {
	t.Parallel()
	e := newBadEnv(t, ws.Config{})
	exp := jwt.NewNumericDate(time.Now().Add(time.Hour))
	good := jwt.MapClaims{"sub": "alice", "exp": exp.Unix(), "subscribe": []string{"*"}, "publish": []string{"*"}}
	withClaims := func(k string, v any) jwt.MapClaims {
		m := jwt.MapClaims{}
		for a, b := range good {
			m[a] = b
		}
		if v == nil {
			delete(m, k)
		} else {
			m[k] = v
		}
		return m
	}
	b64 := base64.RawURLEncoding.EncodeToString
	payload := b64([]byte(fmt.Sprintf(`{"sub":"alice","exp":%d,"subscribe":["*"],"publish":["*"]}`, exp.Unix())))
	tokens := []struct{ name, token string }{
		{"alg none", e.token(good, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType)},
		{"alg none, unsigned by hand", b64([]byte(`{"alg":"none","typ":"JWT"}`)) + "." + payload + "."},
		{"HS512 (not configured)", e.token(good, jwt.SigningMethodHS512, e.secret)},
		{"forged (another secret)", e.token(good, jwt.SigningMethodHS256, []byte("not-the-secret"))},
		{"expired", e.token(withClaims("exp", time.Now().Add(-time.Minute).Unix()), jwt.SigningMethodHS256, e.secret)},
		{"no exp", e.token(withClaims("exp", nil), jwt.SigningMethodHS256, e.secret)},
		{"not valid before next hour", e.token(withClaims("nbf", time.Now().Add(time.Hour).Unix()), jwt.SigningMethodHS256, e.secret)},
		{"claims of the wrong type", e.token(withClaims("subscribe", 42), jwt.SigningMethodHS256, e.secret)},
		{"signature cut off", strings.TrimRight(e.token(good, jwt.SigningMethodHS256, e.secret), "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")},
		{"not a token", "%%%.@@@.!!!"},
		{"100 KiB of token", strings.Repeat("A", 100<<10)},
	}
	status := func(req *http.Request) (int, string) {
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", req.Method, req.URL.Path, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return resp.StatusCode, strings.TrimSpace(string(b))
	}
	for _, tk := range tokens {
		before := metric(e.metrics, "pubmesh_ws_auth_failures_total")
		// WebSocket upgrade, token in the query as a browser sends it.
		req, _ := http.NewRequest(http.MethodGet, "http://"+e.addr+"/ws?token="+url.QueryEscape(tk.token), nil)
		req.Header.Set("Connection", "Upgrade")
		req.Header.Set("Upgrade", "websocket")
		req.Header.Set("Sec-WebSocket-Version", "13")
		req.Header.Set("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
		wsCode, wsBody := status(req)
		// HTTP publish, token in the header.
		req, _ = http.NewRequest(http.MethodPost, "http://"+e.addr+"/api/publish/news", strings.NewReader(`1`))
		req.Header.Set("Authorization", "Bearer "+tk.token)
		httpCode, _ := status(req)
		if wsCode != http.StatusUnauthorized || httpCode != http.StatusUnauthorized {
			t.Errorf("token %s: WebSocket upgrade %d %s, HTTP publish %d; want 401 for both", tk.name, wsCode, wsBody, httpCode)
			continue
		}
		if after := metric(e.metrics, "pubmesh_ws_auth_failures_total"); after < before+2 {
			t.Errorf("token %s: auth failures %v → %v, want +2", tk.name, before, after)
		}
		var body struct{ Message string }
		json.Unmarshal([]byte(wsBody), &body)
		recordBad("token (WebSocket upgrade and HTTP publish)", tk.name, "401 `unauthorized`: "+truncateStr(body.Message, 90))
	}

	// HTTP publish: no credential, bad channels, bodies.
	post := func(path, bearer string, body io.Reader) (int, string) {
		req, _ := http.NewRequest(http.MethodPost, "http://"+e.addr+path, body)
		if bearer != "" {
			req.Header.Set("Authorization", "Bearer "+bearer)
		}
		return status(req)
	}
	for _, tc := range []struct {
		name, path, bearer string
		body               io.Reader
		want               int
	}{
		{"no credential", "/api/publish/news", "", strings.NewReader(`1`), 401},
		{"Basic instead of Bearer", "/api/publish/news", "", strings.NewReader(`1`), 401},
		{"a body of 64 MiB", "/api/publish/news", e.apiKey, io.LimitReader(zeros{}, 64<<20), 413},
		{"a body of unknown length that never ends", "/api/publish/news", e.apiKey, endless{}, 413},
		{"a body that is not JSON", "/api/publish/news", e.apiKey, strings.NewReader(`{"a":`), 400},
		{"channel with a control character", "/api/publish/a%01b", e.apiKey, strings.NewReader(`1`), 400},
		{"channel with invalid UTF-8", "/api/publish/a%ff%fe", e.apiKey, strings.NewReader(`1`), 400},
		{"channel of 200 bytes", "/api/publish/" + strings.Repeat("c", 200), e.apiKey, strings.NewReader(`1`), 400},
	} {
		var code int
		var body string
		if tc.name == "Basic instead of Bearer" {
			req, _ := http.NewRequest(http.MethodPost, "http://"+e.addr+tc.path, tc.body)
			req.SetBasicAuth("user", e.apiKey)
			code, body = status(req)
		} else {
			code, body = post(tc.path, tc.bearer, tc.body)
		}
		if code != tc.want {
			t.Errorf("HTTP publish, %s: %d %s, want %d", tc.name, code, body, tc.want)
			continue
		}
		var eb struct{ Code, Message string }
		json.Unmarshal([]byte(body), &eb)
		recordBad("HTTP publish", tc.name, fmt.Sprintf("%d `%s`: %s", code, eb.Code, truncateStr(eb.Message, 80)))
	}

	// A flood of HTTP publishes with one token: held to the WebSocket
	// connection's allowance, per subject.
	flooder := e.token(jwt.MapClaims{"sub": "flooder", "exp": exp.Unix(), "publish": []string{"*"}}, jwt.SigningMethodHS256, e.secret)
	accepted, refused := 0, 0
	for i := range 200 {
		code, body := post("/api/publish/flood", flooder, strings.NewReader(fmt.Sprint(i)))
		switch {
		case code == http.StatusOK:
			accepted++
		case code == http.StatusTooManyRequests && strings.Contains(body, ws.CodeRateLimited):
			refused++
		default:
			t.Fatalf("HTTP publish flood: %d %s after %d accepted, %d refused", code, body, accepted, refused)
		}
	}
	if accepted > 100 || refused < 100 {
		t.Errorf("HTTP publish flood: %d accepted, %d refused", accepted, refused)
	}
	recordBad("HTTP publish", "a flood of 200 publishes with one token", fmt.Sprintf("%d accepted (burst 40, 20/s per token subject), %d refused with 429 `rate_limited`", accepted, refused))
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

// endless is a body without a length that never ends; the client stops
// sending when the server answers and closes.
type endless struct{}

func (endless) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = '1'
	}
	return len(p), nil
}

func truncateStr(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// TestBadInputEtcdValues: node registrations that are not what a node
// agent writes are ignored by the fanout clients, logged and counted; a
// client keeps publishing and receiving through the real node.
func TestBadInputEtcdValues(t *testing.T) {
	t.Parallel()
	e := newBadEnv(t, ws.Config{})
	reg := prometheus.NewRegistry()
	logs := &logCapture{}
	c := e.fanout(reg, slog.New(logs))
	sub, err := c.Subscribe(context.Background(), "v")
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	nodeKey := func(id string) string { return e.reg.NodeKey(id) }
	for i, tc := range []struct{ name, id, value string }{
		{"not JSON", "g1", "garbage \x00\xff"},
		{"JSON of another type", "g2", `[1,2,3]`},
		{"an id that is not the key's", "g3", `{"id":"real1","addr":"127.0.0.1:1","state":"ready"}`},
		{"an unknown state", "g4", `{"id":"g4","addr":"127.0.0.1:1","state":"exploded"}`},
		{"an address without a port", "g5", `{"id":"g5","addr":"somewhere","state":"ready"}`},
		{"an empty value", "g6", ``},
		{"1 MiB of garbage", "g7", strings.Repeat("{", 1<<20)},
	} {
		before := metric(reg, "pubmesh_fanout_bad_node_values_total")
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, err := e.cli.Put(ctx, nodeKey(tc.id), tc.value)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		waitUntil(t, within, tc.name+" to be counted and logged", func() bool {
			return metric(reg, "pubmesh_fanout_bad_node_values_total") > before && logs.has("ignoring bad node value", tc.id)
		})
		for _, n := range c.Nodes().Nodes {
			if n.ID == tc.id {
				t.Errorf("%s: the client uses node %+v", tc.name, n)
			}
		}
		// Still working: a publish on the real node reaches the
		// subscriber.
		if err := c.Publish(context.Background(), "v", fmt.Appendf(nil, "%d", i)); err != nil {
			t.Fatalf("%s: publish: %v", tc.name, err)
		}
		select {
		case m := <-sub.Messages():
			if string(m.Payload) != fmt.Sprint(i) {
				t.Fatalf("%s: got %q", tc.name, m.Payload)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: message not delivered", tc.name)
		}
		recordBad("etcd node value", tc.name, "ignored by every fanout client: a warning (`discovery: ignoring bad node value`) and `pubmesh_fanout_bad_node_values_total`")
	}

	// A garbage value at the key of a node id an agent starts with: the
	// agent cannot register, and says why.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := e.cli.Put(ctx, nodeKey("taken"), "garbage"); err != nil {
		t.Fatal(err)
	}
	port, err := freeport.Get()
	if err != nil {
		t.Fatal(err)
	}
	a, err := broker.New(broker.Config{Registry: e.reg, ID: "taken", Port: port, DataDir: t.TempDir(), LeaseTTL: time.Second,
		JoinTimeout: time.Second, DrainTimeout: time.Second, Logger: testLog()})
	if err != nil {
		t.Fatal(err)
	}
	runErr := make(chan error, 1)
	go func() { runErr <- a.Run(context.Background()) }()
	select {
	case err := <-runErr:
		if err == nil || !strings.Contains(err.Error(), "not a node registration") {
			t.Errorf("agent on a key holding garbage: %v, want an error saying the key holds something else", err)
		} else {
			recordBad("etcd node value", "garbage at the key of the id an agent starts with", "the agent stops at start: `"+err.Error()+"`")
		}
	case <-time.After(within):
		t.Error("agent on a key holding garbage: still running")
		a.Shutdown(context.Background())
		<-runErr
	}
}

// fakeServer is a TCP server on loopback that is not Redis: behave serves
// each connection.
func fakeServer(t *testing.T, behave func(c net.Conn)) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				behave(c)
			}()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return l.Addr().String()
}

// answer writes reply after every read.
func answer(reply string) func(net.Conn) {
	return func(c net.Conn) {
		buf := make([]byte, 4096)
		for {
			if _, err := c.Read(buf); err != nil {
				return
			}
			if _, err := c.Write([]byte(reply)); err != nil {
				return
			}
		}
	}
}

// notRedis are servers that answer something other than Redis would.
var notRedis = []struct {
	name   string
	behave func(net.Conn)
	resp   bool // breaks RESP itself (respguard counts it)
}{
	{"a map of 4e9 entries to every command", answer("%4000000000\r\n"), true},
	{"aggregates nested 100000 deep", answer(strings.Repeat("*1\r\n", 100000)), true},
	{"a bulk string of 2^63 bytes", answer("$9223372036854775806\r\n"), true},
	{"an HTTP error page", answer("HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"), true},
	{"one endless line", func(c net.Conn) {
		line := bytes.Repeat([]byte("a"), 64<<10)
		c.Write([]byte("+"))
		for {
			c.SetWriteDeadline(time.Now().Add(5 * time.Second))
			if _, err := c.Write(line); err != nil {
				return
			}
		}
	}, true},
	{"+OK to every command", answer("+OK\r\n"), false},
	{"an error to every command", answer("-ERR this is not Redis\r\n"), false},
	{"silence (accepts, never answers)", func(c net.Conn) { io.Copy(io.Discard, c) }, false},
	{"a connection closed at once", func(net.Conn) {}, false},
}

// TestBadInputNotRedis: a server that is not Redis, registered as a ready
// node, neither crashes a fanout client nor blocks it: Subscribe returns,
// publishes go to the real node, and the bad node is logged and counted.
func TestBadInputNotRedis(t *testing.T) {
	t.Parallel()
	for _, nr := range notRedis {
		t.Run(nr.name, func(t *testing.T) {
			t.Parallel()
			e := newBadEnv(t, ws.Config{})
			e.register("fake", fakeServer(t, nr.behave))
			reg := prometheus.NewRegistry()
			logs := &logCapture{}
			c := e.fanout(reg, slog.New(logs))
			waitUntil(t, within, "the client to see both nodes", func() bool { return len(c.Nodes().Ready()) == 2 })
			var chans []string
			for i := range 8 {
				chans = append(chans, channelName(i))
			}
			t0 := time.Now()
			ctx, cancel := context.WithTimeout(context.Background(), within)
			sub, err := c.Subscribe(ctx, chans...)
			cancel()
			took := time.Since(t0)
			if err != nil {
				t.Fatalf("Subscribe: %v", err)
			}
			defer sub.Close()
			// Subscribe waits for a node that does not answer (as Redis) at
			// most one dial and one command: 2 s + 1 s by default.
			if took > 10*time.Second {
				t.Errorf("Subscribe took %s", took)
			}
			for i := range 40 {
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				err := c.Publish(ctx, chans[i%8], fmt.Appendf(nil, "%d", i))
				cancel()
				if err != nil {
					t.Fatalf("publish %d: %v", i, err)
				}
			}
			got := map[string]bool{}
			deadline := time.After(20 * time.Second)
			for len(got) < 40 {
				select {
				case m := <-sub.Messages():
					got[string(m.Payload)] = true
				case <-deadline:
					t.Fatalf("received %d of 40", len(got))
				}
			}
			bad := metric(reg, "pubmesh_fanout_bad_replies_total")
			retries := metric(reg, "pubmesh_fanout_publish_retries_total")
			if nr.resp && (bad == 0 || !logs.has("not a Redis reply")) {
				t.Errorf("bad_replies_total %v, log line %v", bad, logs.has("not a Redis reply"))
			}
			if !logs.has("fake") {
				t.Errorf("nothing logged about the node")
			}
			outcome := fmt.Sprintf("Subscribe returns in %s, 40 of 40 publishes delivered through the real node (%v retried); ", took.Round(100*time.Millisecond), retries)
			if nr.resp {
				outcome += "its connections are cut before go-redis reads the reply: an error log and `pubmesh_fanout_bad_replies_total`"
			} else {
				outcome += "warnings, `pubmesh_fanout_publish_retries_total`, the node is tried last for 2 s after each failure"
			}
			recordBad("node that is not Redis (fanout client)", nr.name, outcome)
		})
	}
	t.Run("agent --attach", func(t *testing.T) {
		t.Parallel()
		e := newBadEnv(t, ws.Config{})
		cases := append(notRedis[:len(notRedis):len(notRedis)], struct {
			name   string
			behave func(net.Conn)
			resp   bool
		}{"PONG to PING, an INFO without run_id", func(c net.Conn) {
			buf := make([]byte, 4096)
			for {
				n, err := c.Read(buf)
				if err != nil {
					return
				}
				reply := "-ERR unknown\r\n"
				switch {
				case bytes.Contains(buf[:n], []byte("PING")):
					reply = "+PONG\r\n"
				case bytes.Contains(buf[:n], []byte("INFO")):
					reply = "$17\r\nprocess_id:12345\r\n\r\n"
				}
				c.Write([]byte(reply))
			}
		}, false})
		for i, nr := range cases {
			addr := fakeServer(t, nr.behave)
			mreg := prometheus.NewRegistry()
			logs := &logCapture{}
			id := fmt.Sprintf("attached%d", i)
			a, err := broker.New(broker.Config{Registry: e.reg, ID: id, Attach: addr, HealthInterval: 100 * time.Millisecond,
				LeaseTTL: time.Second, JoinTimeout: time.Second, DrainTimeout: time.Second, Logger: slog.New(logs), Registerer: mreg})
			if err != nil {
				t.Fatal(err)
			}
			runErr := make(chan error, 1)
			go func() { runErr <- a.Run(context.Background()) }()
			waitUntil(t, within, nr.name+": failed checks", func() bool {
				return metric(mreg, "pubmesh_node_ping_failures_total") >= 3 || metric(mreg, "pubmesh_node_register_errors_total") >= 2
			})
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			st, _, err := (&cluster{reg: e.reg}).nodeState(ctx, id)
			cancel()
			if err != nil || st != "" {
				t.Errorf("%s: node registered (%q, %v)", nr.name, st, err)
			}
			if !logs.has("missed PINGs") && !logs.has("cannot register") {
				t.Errorf("%s: no warning logged", nr.name)
			}
			sctx, scancel := context.WithTimeout(context.Background(), 10*time.Second)
			a.Shutdown(sctx)
			scancel()
			select {
			case <-runErr:
			case <-time.After(10 * time.Second):
				t.Fatalf("%s: agent did not stop", nr.name)
			}
			outcome := fmt.Sprintf("never registered; `pubmesh_node_ping_failures_total` %v", metric(mreg, "pubmesh_node_ping_failures_total"))
			if n := metric(mreg, "pubmesh_node_register_errors_total"); n > 0 {
				outcome = fmt.Sprintf("never registered; `pubmesh_node_register_errors_total` %v (\"not a Redis server\")", n)
			}
			recordBad("node that is not Redis (agent --attach)", nr.name, outcome+"; a warning")
		}
	})
}

// One token opening many connections gets one subject's allowance: at most
// MaxConnectionsPerSubject connections (the next gets 429 before the
// upgrade) and one publish bucket shared by all of them.
func TestBadInputOneTokenManyConnections(t *testing.T) {
	t.Parallel()
	e := newBadEnv(t, ws.Config{MaxConnectionsPerSubject: 3})
	claims := func(sub string) jwt.MapClaims {
		return jwt.MapClaims{"sub": sub, "exp": time.Now().Add(time.Hour).Unix(), "subscribe": []string{"*"}, "publish": []string{"*"}}
	}
	alice := e.token(claims("alice"), jwt.SigningMethodHS256, e.secret)
	bob := e.token(claims("bob"), jwt.SigningMethodHS256, e.secret)
	dial := func(tok string) (*websocket.Conn, int) {
		d := websocket.Dialer{HandshakeTimeout: 10 * time.Second}
		c, resp, err := d.Dial("ws://"+e.addr+"/ws?token="+tok, nil)
		if resp != nil && resp.Body != nil {
			resp.Body.Close()
		}
		if err != nil {
			if resp == nil {
				t.Fatal(err)
			}
			return nil, resp.StatusCode
		}
		t.Cleanup(func() { c.Close() })
		return c, http.StatusSwitchingProtocols
	}
	var conns []*websocket.Conn
	for i := range 3 {
		c, code := dial(alice)
		if c == nil {
			t.Fatalf("alice's connection %d: %d", i+1, code)
		}
		conns = append(conns, c)
	}
	if _, code := dial(alice); code != http.StatusTooManyRequests {
		t.Errorf("alice's fourth connection: %d, want 429", code)
	}
	if c, code := dial(bob); c == nil {
		t.Errorf("bob's first connection: %d, want 101", code)
	}

	// 3 × 100 publishes at once: the three connections share one bucket
	// (burst 40, 20/s), so far fewer than 3 × 40 are accepted.
	start := time.Now()
	var wg sync.WaitGroup
	var accepted, limited atomic.Int64
	for _, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 100 {
				c.SetWriteDeadline(time.Now().Add(10 * time.Second))
				c.WriteMessage(websocket.TextMessage, fmt.Appendf(nil, `{"op":"publish","channel":"many","data":%d,"id":%d}`, i, i))
			}
			for range 100 {
				switch f := reply(c, 20*time.Second); {
				case f.Op == "ok":
					accepted.Add(1)
				case f.Code == ws.CodeRateLimited:
					limited.Add(1)
				default:
					t.Errorf("publish: %+v", f)
					return
				}
			}
		}()
	}
	wg.Wait()
	allowance := ws.DefaultPublishBurst + int64(float64(ws.DefaultPublishRate)*time.Since(start).Seconds()) + 1
	if accepted.Load() > allowance || accepted.Load()+limited.Load() != 300 {
		t.Errorf("one subject on 3 connections: %d accepted, %d rate_limited; want at most %d accepted", accepted.Load(), limited.Load(), allowance)
	}
	recordBad("WebSocket frame", "one token on 4 connections (limit 3), 300 publishes at once over 3",
		fmt.Sprintf("the fourth connection: 429 before the upgrade; %d accepted (one bucket for the subject: burst %d, %d/s), %d refused with `rate_limited`; another subject unaffected",
			accepted.Load(), ws.DefaultPublishBurst, ws.DefaultPublishRate, limited.Load()))
}
