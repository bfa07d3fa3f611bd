package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/pubmesh/pubmesh/discovery"
	"github.com/pubmesh/pubmesh/internal/testredis"
	"github.com/pubmesh/pubmesh/pubmeshtest"
)

// TestGatewaysPresenceAndKill runs two real `pubmesh gateway` processes
// on one cluster: `pubmesh gateways` lists both; the server API refuses a
// request without the API key and answers with it; presence lists the
// subscribers of both; after `kill -9` of one gateway its client leaves
// presence within the TTL (15 s, plus a refresh interval), the other
// gateway's subscriber gets its leave frame, and the registry drops it.
func TestGatewaysPresenceAndKill(t *testing.T) {
	t.Parallel()
	const apiKey = "presence-key-81c2"
	keyFile := filepath.Join(t.TempDir(), "keys")
	if err := os.WriteFile(keyFile, []byte(apiKey+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cluster := uniqueCluster(t)
	reg := registry(t, cluster)
	rs := testredis.New(t)
	register(t, reg, "n1", rs.Addr, discovery.StateReady)
	pubmeshtest.ApplyConfig(t, reg, `namespaces: [{match: "room.*", presence: true, join_leave: true}]`)

	var addrs []string
	var procs []*proc
	for range 2 {
		addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
		p := startPubmeshEnv(t, cleanEnv(), "gateway", "--listen", addr, "--api-key-file", keyFile,
			"--etcd", etcdEndpoint, "--cluster", cluster, "--presence-ttl", "3s")
		p.out.wait(t, "^gateway: http://"+addr, 30*time.Second)
		addrs, procs = append(addrs, addr), append(procs, p)
	}
	// pubmesh gateways lists both, by the registry.
	deadline := time.Now().Add(15 * time.Second)
	for {
		r := runPubmesh(t, 30*time.Second, "gateways", "--etcd", etcdEndpoint, "--cluster", cluster, "--json")
		var gws []discovery.GatewayInfo
		json.Unmarshal([]byte(r.stdout), &gws)
		if len(gws) == 2 && strings.Contains(r.stdout, addrs[0]) && strings.Contains(r.stdout, addrs[1]) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("pubmesh gateways --json: %s %s", r.stdout, r.stderr)
		}
		time.Sleep(200 * time.Millisecond)
	}
	table := runPubmesh(t, 30*time.Second, "gateways", "--etcd", etcdEndpoint, "--cluster", cluster)
	if !strings.Contains(table.stdout, "CONNECTIONS") || !strings.Contains(table.stdout, "2 gateways") {
		t.Errorf("pubmesh gateways table:\n%s", table.stdout)
	}

	get := func(addr, path, cred string) (int, map[string]any) {
		req, _ := http.NewRequest("GET", "http://"+addr+path, nil)
		if cred != "" {
			req.Header.Set("Authorization", "Bearer "+cred)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		var m map[string]any
		json.Unmarshal(b, &m)
		return resp.StatusCode, m
	}
	if code, _ := get(addrs[0], "/api/info", ""); code != http.StatusUnauthorized {
		t.Errorf("/api/info without the API key: %d, want 401", code)
	}
	if code, _ := get(addrs[0], "/api/info", "wrong"); code != http.StatusUnauthorized {
		t.Errorf("/api/info with a wrong key: %d, want 401", code)
	}

	dial := func(addr, info string) *websocket.Conn {
		c, _, err := websocket.DefaultDialer.Dial("ws://"+addr+"/ws?token="+apiKey+"&info="+info, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		c.WriteJSON(map[string]any{"op": "subscribe", "channel": "room.1", "id": 1})
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		var f map[string]any
		if err := c.ReadJSON(&f); err != nil || f["op"] != "ok" {
			t.Fatalf("subscribe: %v %v", f, err)
		}
		return c
	}
	stay := dial(addrs[0], "1")
	dial(addrs[1], "2")
	stats := func() (float64, float64) {
		_, m := get(addrs[0], "/api/presence/room.1/stats", apiKey)
		c, _ := m["clients"].(float64)
		u, _ := m["users"].(float64)
		return c, u
	}
	// The gateway adds the entry just after the subscribe's ok: wait for it.
	for wait := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		c, u := stats()
		if c == 2 && u == 1 { // both are the API key's subject
			break
		}
		if time.Now().After(wait) {
			t.Fatalf("presence stats with both gateways: %v clients %v users", c, u)
		}
	}
	code, info := get(addrs[1], "/api/info", apiKey)
	if gws, _ := info["gateways"].([]any); code != 200 || len(gws) != 2 {
		t.Fatalf("/api/info: %d %v", code, info)
	}

	procs[1].cmd.Process.Signal(syscall.SIGKILL)
	start := time.Now()
	for {
		if c, _ := stats(); c == 1 {
			break
		}
		// --presence-ttl 3s: gone within 4 s (the TTL and a third) plus
		// slack; the default TTL (15s) would take four times as long.
		if time.Since(start) > 8*time.Second {
			t.Fatal("the killed gateway's client still in presence 8 s after kill -9, with --presence-ttl 3s")
		}
		time.Sleep(250 * time.Millisecond)
	}
	t.Logf("the killed gateway's client left presence %s after kill -9", time.Since(start).Round(100*time.Millisecond))
	stay.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		var f map[string]any
		if err := stay.ReadJSON(&f); err != nil {
			t.Fatalf("waiting for the leave frame: %v", err)
		}
		if inf, _ := f["info"].(map[string]any); f["op"] == "leave" && fmt.Sprint(inf["info"]) == "2" {
			break
		}
	}
	deadline = time.Now().Add(20 * time.Second)
	for {
		gws, _ := reg.Gateways(t.Context())
		if len(gws) == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("registry after the kill: %+v", gws)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
