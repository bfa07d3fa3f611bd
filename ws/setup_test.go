package ws

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"

	"github.com/pubmesh/pubmesh/discovery"
	"github.com/pubmesh/pubmesh/fanout"
	"github.com/pubmesh/pubmesh/internal/embedetcd"
	"github.com/pubmesh/pubmesh/internal/testredis"
)

// The package's tests share one etcd, started by the first test that needs
// it (not by fuzz workers, which need none); each test has its own cluster
// name and its own redis-servers.
var (
	etcdOnce sync.Once
	etcdSrv  *embedetcd.Server
	etcdErr  error
)

func etcdEndpoint(t testing.TB) string {
	t.Helper()
	etcdOnce.Do(func() { etcdSrv, etcdErr = embedetcd.Start(embedetcd.Config{}) })
	if etcdErr != nil {
		t.Fatalf("embedded etcd: %v", etcdErr)
	}
	return etcdSrv.Endpoint()
}

func TestMain(m *testing.M) {
	code := m.Run()
	if etcdSrv != nil {
		etcdSrv.Close()
	}
	if code == 0 {
		// Everything a test started has been stopped in its Cleanup; what
		// remains would be a leak. The HTTP clients' idle keep-alive
		// connections are closed first.
		http.DefaultClient.CloseIdleConnections()
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "ws tests: leaked goroutines:", err)
			code = 1
		}
	}
	os.Exit(code)
}

var clusterSeq atomic.Int64

// gw is a gateway over a real cluster for one test: its own cluster name
// in the shared etcd, real redis-servers, a real fanout client, and the
// Handler serving on a loopback port.
type gw struct {
	h       *Handler
	client  *fanout.Client
	gateway *Gateway
	reg     *discovery.Registry
	etcd    *clientv3.Client
	url     string // http://127.0.0.1:port
	wsURL   string // ws://127.0.0.1:port/ws
	reg2    *prometheus.Registry
}

type gwOptions struct {
	nodes  int           // redis-servers registered ready; default 1, -1 for none
	fanout fanout.Config // tweaks for the fanout client
}

func newGW(t testing.TB, cfg Config, o gwOptions) *gw {
	t.Helper()
	ctx := context.Background()
	cli, err := discovery.Dial(ctx, discovery.EtcdConfig{Endpoints: []string{etcdEndpoint(t)}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	cluster := fmt.Sprintf("ws-%d-%d", os.Getpid(), clusterSeq.Add(1))
	reg, err := discovery.New(cli, discovery.Config{Cluster: cluster})
	if err != nil {
		t.Fatal(err)
	}
	g := &gw{reg: reg, etcd: cli}
	if o.nodes == 0 {
		o.nodes = 1
	}
	for i := range max(o.nodes, 0) {
		g.addNode(t, fmt.Sprintf("n%d", i))
	}
	g.start(t, cfg, o.fanout, "127.0.0.1:0")
	if o.nodes > 0 {
		waitFor(t, 20*time.Second, "the fanout client to see a ready node", func() bool { return len(g.client.Nodes().Ready()) > 0 })
	}
	return g
}

// another starts another gateway on g's cluster (its own fanout client,
// Handler and metrics) on listen ("127.0.0.1:0" for any port), closed
// with the test or by g.gateway.Close.
func (g *gw) another(t testing.TB, cfg Config, listen string) *gw {
	t.Helper()
	o := &gw{reg: g.reg, etcd: g.etcd}
	o.start(t, cfg, fanout.Config{}, listen)
	waitFor(t, 20*time.Second, "the fanout client to see a ready node", func() bool { return len(o.client.Nodes().Ready()) > 0 })
	return o
}

// start runs a gateway for g, built as `pubmesh gateway` builds it
// (Overflow: Block and all).
func (g *gw) start(t testing.TB, cfg Config, fc fanout.Config, listen string) {
	t.Helper()
	g.reg2 = prometheus.NewRegistry()
	fc.EtcdClient = g.etcd
	fc.Cluster = g.reg.Cluster()
	fc.Registerer = g.reg2
	if fc.Logger == nil {
		fc.Logger = quietLogger()
	}
	if cfg.Logger == nil {
		cfg.Logger = quietLogger()
	}
	if cfg.Metrics == nil {
		cfg.Metrics = g.reg2
	}
	nctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	gwy, err := StartGateway(nctx, GatewayConfig{Fanout: fc, Handler: cfg, Listen: listen})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := gwy.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	g.gateway = gwy
	g.client, g.h = gwy.Client(), gwy.Handler()
	g.url = strings.TrimSuffix(gwy.URL(), "/")
	g.wsURL = gwy.WebSocketURL()
}

// addNode starts a redis-server and registers it as ready.
func (g *gw) addNode(t testing.TB, id string) *testredis.Server {
	t.Helper()
	rs := testredis.New(t)
	r, err := g.reg.Register(context.Background(), discovery.Node{
		ID: id, Addr: rs.Addr, State: discovery.StateReady, StartedAt: time.Now(), Version: "test", RunID: fmt.Sprint(rs.PID()),
	}, discovery.RegisterOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close(context.Background()) })
	return rs
}

func quietLogger() *slog.Logger {
	if os.Getenv("PUBMESH_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

func waitFor(t testing.TB, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", within, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// frame is any server frame.
type frame struct {
	Op      string          `json:"op"`
	ID      json.RawMessage `json:"id"`
	Code    string          `json:"code"`
	Message string          `json:"message"`
	Channel string          `json:"channel"`
	Pattern string          `json:"pattern"`
	Data    json.RawMessage `json:"data"`
	TS      int64           `json:"ts"`
	// History: pos of messages, of a subscribe's ok and of a history
	// reply; recovered and count of a resume's ok; a history reply's
	// messages.
	Pos       string  `json:"pos"`
	Recovered *bool   `json:"recovered"`
	Count     *int    `json:"count"`
	Messages  []frame `json:"messages"`
}

// wsClient is a test client over a real socket.
type wsClient struct {
	t      testing.TB
	c      *websocket.Conn
	nextID int
	queue  []frame // frames read while looking for another
}

// dial connects with token (in ?token=, if not empty) and extra headers,
// failing the test on error.
func (g *gw) dial(t testing.TB, token string, hdr http.Header) *wsClient {
	t.Helper()
	c, resp, err := g.tryDial(token, hdr)
	if err != nil {
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		t.Fatalf("dial: %v (HTTP %d)", err, status)
	}
	wc := &wsClient{t: t, c: c}
	t.Cleanup(func() { c.Close() })
	return wc
}

func (g *gw) tryDial(token string, hdr http.Header) (*websocket.Conn, *http.Response, error) {
	u := g.wsURL
	if token != "" {
		u += "?token=" + url.QueryEscape(token)
	}
	d := websocket.Dialer{HandshakeTimeout: 10 * time.Second}
	c, resp, err := d.Dial(u, hdr)
	if resp != nil && resp.Body != nil {
		resp.Body.Close()
	}
	return c, resp, err
}

func (c *wsClient) send(v any) {
	c.t.Helper()
	var b []byte
	switch v := v.(type) {
	case string:
		b = []byte(v)
	case []byte:
		b = v
	default:
		b, _ = json.Marshal(v)
	}
	c.c.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if err := c.c.WriteMessage(websocket.TextMessage, b); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

// read returns the next frame from the socket, or the error.
func (c *wsClient) read(within time.Duration) (frame, error) {
	c.c.SetReadDeadline(time.Now().Add(within))
	_, b, err := c.c.ReadMessage()
	if err != nil {
		return frame{}, err
	}
	var f frame
	if err := json.Unmarshal(b, &f); err != nil {
		return frame{}, fmt.Errorf("frame %q is not JSON: %v", b, err)
	}
	return f, nil
}

// next returns the first frame (queued or new) that match accepts.
func (c *wsClient) next(within time.Duration, match func(frame) bool) frame {
	c.t.Helper()
	for i, f := range c.queue {
		if match(f) {
			c.queue = append(c.queue[:i:i], c.queue[i+1:]...)
			return f
		}
	}
	deadline := time.Now().Add(within)
	for {
		f, err := c.read(time.Until(deadline))
		if err != nil {
			c.t.Fatalf("read: %v", err)
		}
		if match(f) {
			return f
		}
		c.queue = append(c.queue, f)
	}
}

// request sends op with a new numeric id and returns the reply.
func (c *wsClient) request(op, channel string, data any) frame {
	c.t.Helper()
	c.nextID++
	id := c.nextID
	m := map[string]any{"op": op, "id": id}
	if channel != "" {
		m["channel"] = channel
	}
	if data != nil {
		m["data"] = data
	}
	c.send(m)
	want := fmt.Sprint(id)
	return c.next(10*time.Second, func(f frame) bool { return f.Op != OpMessage && string(f.ID) == want })
}

func (c *wsClient) mustOK(op, channel string, data any) {
	c.t.Helper()
	if f := c.request(op, channel, data); f.Op != OpOK {
		c.t.Fatalf("%s %s: got %+v, want ok", op, channel, f)
	}
}

func (c *wsClient) message(within time.Duration) frame {
	c.t.Helper()
	return c.next(within, func(f frame) bool { return f.Op == OpMessage })
}

// closeCode reads until the connection closes and returns the close error.
func (c *wsClient) closeErr(within time.Duration) *websocket.CloseError {
	c.t.Helper()
	deadline := time.Now().Add(within)
	for n := 0; ; n++ {
		_, _, err := func() (int, []byte, error) {
			c.c.SetReadDeadline(deadline)
			return c.c.ReadMessage()
		}()
		if err == nil {
			continue
		}
		ce, ok := err.(*websocket.CloseError)
		if !ok {
			c.t.Fatalf("connection ended after %d frames with %v, want a close frame", n, err)
		}
		return ce
	}
}

// post sends body to path with an optional bearer credential.
func (g *gw) post(t testing.TB, path, bearer string, body []byte) (int, map[string]any) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, g.url+path, bytes.NewReader(body))
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	return do(t, req)
}

func (g *gw) get(t testing.TB, path, bearer string) (int, map[string]any) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, g.url+path, nil)
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	return do(t, req)
}

func do(t testing.TB, req *http.Request) (int, map[string]any) {
	t.Helper()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var m map[string]any
	if strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
		if err := json.Unmarshal(b, &m); err != nil {
			t.Fatalf("%s %s: body %q: %v", req.Method, req.URL.Path, b, err)
		}
	}
	return resp.StatusCode, m
}

// metric reads a counter or gauge of the gateway's registry.
func (g *gw) metric(name string, labels ...string) float64 {
	m := g.h.metrics
	var c prometheus.Metric
	switch name {
	case "connections":
		c = m.connections
	case "subscriptions":
		c = m.subscriptions
	case "channels":
		c = m.channels
	case "messages_out":
		c = m.messagesOut
	case "messages_received":
		c = m.messagesFanout
	case "slow_consumers":
		c = m.slowConsumers
	case "errors":
		c = m.errors.WithLabelValues(labels...)
	case "auth_failures":
		c = m.authFailures.WithLabelValues(labels...)
	case "messages_in":
		c = m.messagesIn.WithLabelValues(labels...)
	case "write_batches":
		c = m.writeBatches
	case "subject_connection_refusals":
		c = m.subjectConnRefusals
	case "namespace_refusals":
		c = m.namespaceRefusals.WithLabelValues(labels...)
	case "anonymous":
		c = m.anonymous.WithLabelValues(labels...)
	case "recoveries":
		c = m.recoveries.WithLabelValues(labels...)
	case "history_requests":
		c = m.historyRequests.WithLabelValues(labels...)
	case "streams":
		c = m.streams.WithLabelValues(labels...)
	case "refreshes":
		c = m.refreshes.WithLabelValues(labels...)
	default:
		panic(name)
	}
	var d dto.Metric
	if err := c.Write(&d); err != nil {
		panic(err)
	}
	if d.Counter != nil {
		return d.Counter.GetValue()
	}
	return d.Gauge.GetValue()
}
