package multihost

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/gorilla/websocket"

	"github.com/pubmesh/pubmesh/discovery"
	"github.com/pubmesh/pubmesh/fanout"
)

// The publishing service and the subscribers are this test binary run
// again inside their hosts' namespaces (roleEnv names the role and carries
// its roleConfig as JSON). Each reports on stdout, one line per event, and
// stops when its stdin closes:
//
//	ready                      subscribed (subscribers) or connected (publisher)
//	pub CH SEQ ok|err          a publish and its result (publisher)
//	msg CLIENT CH SEQ          a message received (subscribers)
//	recovered CLIENT CH true|false   a resume's answer (WebSocket clients)
//	gap CLIENT CH              a gap a fanout subscription reported
const roleEnv = "PUBMESH_MULTIHOST_ROLE"

// roleConfig is what a role process needs.
type roleConfig struct {
	Role      string   `json:"role"` // publisher, fanout, websocket
	Etcd      []string `json:"etcd"` // https:// endpoints
	Cluster   string   `json:"cluster"`
	CA        string   `json:"ca"`
	Cert      string   `json:"cert"` // client certificate for etcd and the nodes
	Key       string   `json:"key"`
	Password  string   `json:"password"` // file with the Redis password
	Channels  []string `json:"channels"`
	Rate      int      `json:"rate"`       // publisher: publishes per second
	Replicas  int      `json:"replicas"`   // publisher
	Gateways  []string `json:"gateways"`   // websocket: wss:// URLs, tried in turn
	APIKey    string   `json:"api_key"`    // websocket
	Conns     int      `json:"conns"`      // websocket: connections in this process
	FirstConn int      `json:"first_conn"` // websocket: number of the first connection (names)
}

// payload is what the publisher sends: the channel's index and a sequence
// number per channel.
type payload struct {
	C int   `json:"c"`
	S int64 `json:"s"`
}

// runRole runs the role of this process and exits, when it was started as
// one; otherwise it returns at once.
func runRole() {
	js := os.Getenv(roleEnv)
	if js == "" {
		return
	}
	var rc roleConfig
	if err := json.Unmarshal([]byte(js), &rc); err != nil {
		fmt.Fprintln(os.Stderr, "role:", err)
		os.Exit(2)
	}
	ctx, cancel := context.WithCancel(context.Background())
	go func() { io.Copy(io.Discard, os.Stdin); cancel() }() // stdin closed: stop
	out := &lineWriter{w: bufio.NewWriter(os.Stdout)}
	var err error
	switch rc.Role {
	case "publisher":
		err = runPublisher(ctx, rc, out)
	case "fanout":
		err = runFanoutSub(ctx, rc, out)
	case "websocket":
		err = runWSClients(ctx, rc, out)
	default:
		err = fmt.Errorf("unknown role %q", rc.Role)
	}
	out.flush()
	if err != nil {
		fmt.Fprintln(os.Stderr, "role "+rc.Role+":", err)
		os.Exit(1)
	}
	os.Exit(0)
}

// lineWriter writes whole lines from many goroutines, flushed at least
// every 50 ms.
type lineWriter struct {
	mu   sync.Mutex
	w    *bufio.Writer
	last time.Time
}

func (l *lineWriter) printf(format string, a ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	fmt.Fprintf(l.w, format+"\n", a...)
	if time.Since(l.last) > 50*time.Millisecond || l.w.Buffered() > 32<<10 {
		l.w.Flush()
		l.last = time.Now()
	}
}

func (l *lineWriter) flush() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.w.Flush()
}

func (rc roleConfig) tls() (*tls.Config, error) {
	b, err := os.ReadFile(rc.CA)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(b)
	tc := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	if rc.Cert != "" {
		pair, err := tls.LoadX509KeyPair(rc.Cert, rc.Key)
		if err != nil {
			return nil, err
		}
		tc.Certificates = []tls.Certificate{pair}
	}
	return tc, nil
}

func (rc roleConfig) fanout(ctx context.Context, id string) (*fanout.Client, error) {
	tc, err := rc.tls()
	if err != nil {
		return nil, err
	}
	pw, err := os.ReadFile(rc.Password)
	if err != nil {
		return nil, err
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	return fanout.New(ctx, fanout.Config{
		Etcd:     discovery.EtcdConfig{Endpoints: rc.Etcd, TLS: tc.Clone(), DialTimeout: 5 * time.Second},
		Cluster:  rc.Cluster,
		ID:       id,
		Replicas: rc.Replicas,
		Password: strings.TrimSpace(string(pw)),
		TLS:      tc,
		Logger:   log,
	})
}

// runPublisher publishes to the channels in turn at rc.Rate until ctx
// ends, one publish at a time (so each channel's order is the publisher's).
func runPublisher(ctx context.Context, rc roleConfig, out *lineWriter) error {
	c, err := rc.fanout(ctx, "mh-publisher")
	if err != nil {
		return err
	}
	defer c.Close()
	for len(c.Nodes().Ready()) == 0 {
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(50 * time.Millisecond):
		}
	}
	out.printf("ready")
	tick := time.NewTicker(time.Second / time.Duration(rc.Rate))
	defer tick.Stop()
	seq := make([]int64, len(rc.Channels))
	for i := 0; ; i++ {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		ch := i % len(rc.Channels)
		seq[ch]++
		b, _ := json.Marshal(payload{C: ch, S: seq[ch]})
		pctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err := c.Publish(pctx, rc.Channels[ch], b)
		cancel()
		res := "ok"
		if err != nil {
			res = "err"
			fmt.Fprintln(os.Stderr, "publish:", err)
		}
		out.printf("pub %d %d %s", ch, seq[ch], res)
	}
}

// runFanoutSub subscribes to every channel and reports what arrives.
func runFanoutSub(ctx context.Context, rc roleConfig, out *lineWriter) error {
	host, _ := os.Hostname()
	id := fmt.Sprintf("mh-sub-%s-%d", host, os.Getpid())
	c, err := rc.fanout(ctx, id)
	if err != nil {
		return err
	}
	defer c.Close()
	for len(c.Nodes().Ready()) == 0 {
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(50 * time.Millisecond):
		}
	}
	s, err := c.Subscribe(ctx, rc.Channels...)
	if err != nil {
		return err
	}
	defer s.Close()
	out.printf("ready")
	name := fmt.Sprintf("fanout%d", rc.FirstConn)
	go func() {
		for g := range s.Gaps() {
			out.printf("gap %s %v", name, strings.ReplaceAll(fmt.Sprint(g), " ", "_"))
		}
	}()
	for {
		select {
		case <-ctx.Done():
			return nil
		case m, ok := <-s.Messages():
			if !ok {
				return nil
			}
			var p payload
			if json.Unmarshal(m.Payload, &p) == nil {
				out.printf("msg %s %d %d", name, p.C, p.S)
			}
		}
	}
}

// runWSClients keeps rc.Conns WebSocket connections, each subscribed to
// every channel with history and resuming from its positions after any
// close, on the next gateway of rc.Gateways (a client-side balancer: every
// gateway must serve every client).
func runWSClients(ctx context.Context, rc roleConfig, out *lineWriter) error {
	tc, err := rc.tls()
	if err != nil {
		return err
	}
	tc.Certificates = nil // a browser presents none
	var wg sync.WaitGroup
	readyc := make(chan struct{}, rc.Conns)
	for i := range rc.Conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			wsClient(ctx, rc, tc, rc.FirstConn+i, out, readyc)
		}()
	}
	for range rc.Conns {
		select {
		case <-readyc:
		case <-ctx.Done():
		}
	}
	out.printf("ready")
	wg.Wait()
	return nil
}

func wsClient(ctx context.Context, rc roleConfig, tc *tls.Config, n int, out *lineWriter, readyc chan<- struct{}) {
	name := fmt.Sprintf("ws%d", n)
	pos := map[int]string{}
	first := true
	for attempt := n; ctx.Err() == nil; attempt++ {
		url := rc.Gateways[attempt%len(rc.Gateways)]
		d := websocket.Dialer{TLSClientConfig: tc, HandshakeTimeout: 5 * time.Second}
		hdr := http.Header{"Authorization": {"Bearer " + rc.APIKey}}
		c, resp, err := d.DialContext(ctx, url, hdr)
		if resp != nil && resp.Body != nil {
			resp.Body.Close()
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "%s: dial %s: %v\n", name, url, err)
			select {
			case <-ctx.Done():
			case <-time.After(200 * time.Millisecond):
			}
			continue
		}
		stop := context.AfterFunc(ctx, func() { c.Close() })
		wsSession(c, rc, name, pos, out, func() {
			if first {
				first = false
				readyc <- struct{}{}
			}
		})
		stop()
		c.Close()
	}
}

// wsSession subscribes every channel (with since, once it has a position)
// and reads until the connection ends.
func wsSession(c *websocket.Conn, rc roleConfig, name string, pos map[int]string, out *lineWriter, subscribed func()) {
	for i, ch := range rc.Channels {
		f := map[string]any{"op": "subscribe", "channel": ch, "id": i + 1}
		if p := pos[i]; p != "" {
			f["since"] = p
		}
		c.SetWriteDeadline(time.Now().Add(5 * time.Second))
		if c.WriteJSON(f) != nil {
			return
		}
	}
	pending := len(rc.Channels)
	// A silent connection (its gateway's host cut off, a hung gateway) is
	// closed: the gateway pings idle clients, so 30 s of nothing is dead.
	for {
		c.SetReadDeadline(time.Now().Add(30 * time.Second))
		var f struct {
			Op        string          `json:"op"`
			ID        json.RawMessage `json:"id"` // a number on replies, a string on messages
			Channel   string          `json:"channel"`
			Data      json.RawMessage `json:"data"`
			Pos       string          `json:"pos"`
			Recovered *bool           `json:"recovered"`
			Code      string          `json:"code"`
			Message   string          `json:"message"`
		}
		if c.ReadJSON(&f) != nil {
			return
		}
		switch f.Op {
		case "message":
			var p payload
			if json.Unmarshal(f.Data, &p) == nil && p.C >= 0 && p.C < len(rc.Channels) {
				out.printf("msg %s %d %d", name, p.C, p.S)
				if f.Pos != "" {
					pos[p.C] = f.Pos
				}
			}
		case "ok":
			var id int
			if json.Unmarshal(f.ID, &id) == nil && id >= 1 && id <= len(rc.Channels) {
				ch := id - 1
				if f.Recovered != nil {
					out.printf("recovered %s %d %t", name, ch, *f.Recovered)
				}
				if pos[ch] == "" && f.Pos != "" {
					pos[ch] = f.Pos
				}
				if pending--; pending == 0 {
					subscribed()
				}
			}
		case "error":
			fmt.Fprintf(os.Stderr, "%s: error frame %s: %s\n", name, f.Code, f.Message)
		}
	}
}
