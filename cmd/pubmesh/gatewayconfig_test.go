package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/pubmesh/pubmesh/clusterconfig"
	"github.com/pubmesh/pubmesh/discovery"
	"github.com/pubmesh/pubmesh/internal/testredis"
	"github.com/pubmesh/pubmesh/pubmeshtest"
)

// gatewayConfigAt is GET /api/config of the gateway at addr.
func gatewayConfigAt(t *testing.T, addr string) (rev int64, doc *clusterconfig.Document, overrides map[string]any) {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/api/config")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body struct {
		Revision  int64           `json:"revision"`
		Document  json.RawMessage `json:"document"`
		Overrides map[string]any  `json:"overrides"`
	}
	if resp.StatusCode != http.StatusOK || json.NewDecoder(resp.Body).Decode(&body) != nil {
		t.Fatalf("GET /api/config: status %d", resp.StatusCode)
	}
	if doc, err = clusterconfig.Parse(body.Document); err != nil {
		t.Fatalf("GET /api/config: document: %v", err)
	}
	return body.Revision, doc, body.Overrides
}

// wsStatus dials the gateway's WebSocket at addr with query (such as
// "?token=..."): 101 when it connects, else the HTTP status.
func wsStatus(t *testing.T, addr, query string) int {
	t.Helper()
	c, resp, err := websocket.DefaultDialer.Dial("ws://"+addr+"/ws"+query, nil)
	if err == nil {
		c.Close()
		return http.StatusSwitchingProtocols
	}
	if resp == nil {
		t.Fatal(err)
	}
	return resp.StatusCode
}

// TestGatewayAnonymousFollowsClusterConfig (issue 11): the real `pubmesh
// gateway` with a JWT secret refuses a WebSocket without a credential
// (401), accepts it once the cluster configuration has a namespace that
// allows anonymous subscribes, and refuses it again once that namespace is
// removed. A bad token stays refused throughout.
func TestGatewayAnonymousFollowsClusterConfig(t *testing.T) {
	t.Parallel()
	secretFile := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(secretFile, []byte("gateway-test-secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cluster := uniqueCluster(t)
	reg := registry(t, cluster)
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	gw := startPubmeshEnv(t, cleanEnv(), "gateway", "--listen", addr, "--jwt-secret-file", secretFile,
		"--etcd", etcdEndpoint, "--cluster", cluster)
	gw.out.wait(t, "^gateway: http://"+addr, 30*time.Second)

	if got := wsStatus(t, addr, ""); got != http.StatusUnauthorized {
		t.Fatalf("WebSocket without a credential by default: %d, want 401", got)
	}
	until := func(what string, want int) {
		t.Helper()
		start := time.Now()
		for {
			got := wsStatus(t, addr, "")
			if got == want {
				t.Logf("%s after %s", what, time.Since(start).Round(time.Millisecond))
				return
			}
			if time.Since(start) > 5*time.Second {
				t.Fatalf("%s: still %d after 5 s, want %d", what, got, want)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	rev := pubmeshtest.ApplyConfig(t, reg, `namespaces: [{match: "public.*", allow_subscribe: anonymous}]`)
	until("anonymous namespace added: WebSocket without a credential accepted", http.StatusSwitchingProtocols)
	if got, _, _ := gatewayConfigAt(t, addr); got != rev {
		t.Errorf("/api/config revision %d, want %d", got, rev)
	}
	if got := wsStatus(t, addr, "?token=not-a-jwt"); got != http.StatusUnauthorized {
		t.Errorf("WebSocket with a bad token while anonymous clients are allowed: %d, want 401", got)
	}
	pubmeshtest.ApplyConfig(t, reg, `namespaces: []`)
	until("anonymous namespace removed: WebSocket without a credential refused", http.StatusUnauthorized)
	if code := gw.interrupt(t); code != 0 {
		t.Fatalf("gateway exited %d: %s", code, gw.errs)
	}
}

// TestGatewayFlagOverridesClusterConfig (issue 11): a limit given to
// `pubmesh gateway` as a flag or in its environment variable wins over
// the cluster configuration (logged at start, listed by /api/config);
// without it the gateway follows the cluster.
func TestGatewayFlagOverridesClusterConfig(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name      string
		args, env []string
		limit     int // subscriptions a connection may hold after the change
	}{
		{"flag", []string{"--max-subscriptions", "2"}, nil, 2},
		{"environment", nil, []string{"PUBMESH_MAX_SUBSCRIPTIONS=2"}, 2},
		{"unset", nil, nil, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cluster := uniqueCluster(t)
			reg := registry(t, cluster)
			rs := testredis.New(t)
			register(t, reg, "n1", rs.Addr, discovery.StateReady)
			addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
			gw := startPubmeshEnv(t, cleanEnv(tc.env...), append([]string{"gateway", "--listen", addr, "--insecure",
				"--etcd", etcdEndpoint, "--cluster", cluster}, tc.args...)...)
			gw.out.wait(t, "^gateway: http://"+addr, 30*time.Second)
			const line = `level=INFO msg="config: flag overrides the cluster configuration" key=gateway.max_subscriptions value=2`
			overridden := tc.limit == 2
			if overridden {
				gw.errs.wait(t, regexp.QuoteMeta(line), 10*time.Second)
			}

			rev := pubmeshtest.ApplyConfig(t, reg, `gateway: {max_subscriptions: 3}`)
			deadline := time.Now().Add(5 * time.Second)
			for {
				got, doc, overrides := gatewayConfigAt(t, addr)
				if got == rev {
					if doc.Gateway.MaxSubscriptions != 3 {
						t.Errorf("/api/config document max_subscriptions %d, want 3", doc.Gateway.MaxSubscriptions)
					}
					want := map[string]any{}
					if overridden {
						want["gateway.max_subscriptions"] = float64(2)
					}
					if fmt.Sprint(overrides) != fmt.Sprint(want) {
						t.Errorf("/api/config overrides %v, want %v", overrides, want)
					}
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("/api/config revision %d, want %d within 5 s", got, rev)
				}
				time.Sleep(20 * time.Millisecond)
			}

			c, _, err := websocket.DefaultDialer.Dial("ws://"+addr+"/ws", nil)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			for i := range 4 {
				c.SetReadDeadline(time.Now().Add(20 * time.Second))
				if err := c.WriteJSON(map[string]any{"op": "subscribe", "channel": fmt.Sprint("ch", i), "id": i}); err != nil {
					t.Fatal(err)
				}
				var reply struct{ Op, Code string }
				if err := c.ReadJSON(&reply); err != nil {
					t.Fatal(err)
				}
				want := "ok"
				if i >= tc.limit {
					want = "error"
				}
				if reply.Op != want || (want == "error" && reply.Code != "limit") {
					t.Fatalf("subscribe %d: %+v, want %s (limit %d)", i+1, reply, want, tc.limit)
				}
			}
			if n := strings.Count(gw.errs.String(), "flag overrides"); !overridden && n != 0 {
				t.Errorf("%d override lines logged without an override; log:\n%s", n, gw.errs)
			}
		})
	}
}

// interrupt stops the process with SIGINT, as Ctrl-C does, and returns its
// exit code.
func (p *proc) interrupt(t *testing.T) int {
	t.Helper()
	p.cmd.Process.Signal(os.Interrupt)
	return p.exit(t, 30*time.Second)
}
