package main

import (
	"context"
	"encoding/json"
	"path"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pubmesh/pubmesh/discovery"
	"github.com/pubmesh/pubmesh/internal/testredis"
)

func register(t *testing.T, reg *discovery.Registry, id, addr string, st discovery.State) *discovery.Registration {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	g, err := reg.Register(ctx, discovery.Node{
		ID: id, Addr: addr, State: st, StartedAt: time.Now().Add(-90 * time.Second), Version: "test", RedisVersion: "7.0.0",
	}, discovery.RegisterOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Close(context.Background()) })
	return g
}

func TestNodesTableAndJSON(t *testing.T) {
	t.Parallel()
	cluster := uniqueCluster(t)
	reg := registry(t, cluster)

	r := runPubmesh(t, 30*time.Second, "nodes", "--etcd", etcdEndpoint, "--cluster", cluster, "--json")
	if r.code != 0 || strings.TrimSpace(r.stdout) != "[]" {
		t.Fatalf("empty cluster --json: exit %d, %q", r.code, r.stdout)
	}
	// a and b point nowhere (nothing listens on ports 1 and 2); c is a
	// real redis-server.
	srv := testredis.New(t)
	register(t, reg, "b", "127.0.0.1:2", discovery.StateJoining)
	register(t, reg, "a", "127.0.0.1:1", discovery.StateReady)
	c := register(t, reg, "c", srv.Addr, discovery.StateReady)
	if err := c.Update(context.Background(), func(n *discovery.Node) { n.ConfigRevision = 42 }); err != nil {
		t.Fatal(err)
	}

	r = runPubmesh(t, 30*time.Second, "nodes", "--etcd", etcdEndpoint, "--cluster", cluster)
	want := [][]string{
		{"ID", "ADDR", "STATE", "UPTIME", "VERSION", "REDIS", "CONFIG", "REACHABLE"},
		{"a", "127.0.0.1:1", "ready", "1m3?s", "test", "7.0.0", "0", "NO"},
		{"b", "127.0.0.1:2", "joining", "1m3?s", "test", "7.0.0", "0", "NO"},
		{"c", srv.Addr, "ready", "1m3?s", "test", "7.0.0", "42", "yes"},
	}
	for _, id := range []string{"a", "b"} {
		if !strings.Contains(r.stderr, "node "+id+" is registered at") || !strings.Contains(r.stderr, "does not answer") {
			t.Errorf("stderr does not explain that node %s is unreachable:\n%s", id, r.stderr)
		}
	}
	if strings.Contains(r.stderr, "node c ") {
		t.Errorf("stderr calls the reachable node c unreachable:\n%s", r.stderr)
	}
	got := strings.Split(strings.TrimRight(r.stdout, "\n"), "\n")
	if r.code != 0 || len(got) != len(want) {
		t.Fatalf("table: exit %d:\n%s", r.code, r.stdout)
	}
	for i, w := range want {
		f := strings.Fields(got[i])
		if len(f) != len(w) {
			t.Errorf("line %d = %q, want columns %q", i, got[i], w)
			continue
		}
		for j := range w {
			if ok, _ := path.Match(w[j], f[j]); !ok {
				t.Errorf("line %d column %d = %q, want %q", i, j, f[j], w[j])
			}
		}
	}

	r = runPubmesh(t, 30*time.Second, "nodes", "--etcd", etcdEndpoint, "--cluster", cluster, "--json")
	var objs []map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &objs); err != nil {
		t.Fatal(err)
	}
	if len(objs) != 3 || objs[0]["id"] != "a" || objs[0]["addr"] != "127.0.0.1:1" || objs[0]["state"] != "ready" || objs[1]["state"] != "joining" ||
		objs[0]["reachable"] != false || objs[0]["unreachable_error"] == nil || objs[2]["reachable"] != true ||
		objs[0]["config_revision"] != float64(0) || objs[2]["config_revision"] != float64(42) {
		t.Errorf("--json = %s", r.stdout)
	}
}

func TestNodesWatch(t *testing.T) {
	t.Parallel()
	cluster := uniqueCluster(t)
	reg := registry(t, cluster)
	p := startPubmesh(t, "nodes", "--etcd", etcdEndpoint, "--cluster", cluster, "--watch", "--json")
	p.out.wait(t, `^\[\]$`, 20*time.Second)
	g := register(t, reg, "w1", "127.0.0.1:1", discovery.StateJoining)
	p.out.wait(t, `"id":"w1".*"state":"joining"`, 10*time.Second)
	if err := g.SetState(context.Background(), discovery.StateReady); err != nil {
		t.Fatal(err)
	}
	p.out.wait(t, `"id":"w1".*"state":"ready"`, 10*time.Second)
	g.Close(context.Background())
	deadline := time.Now().Add(10 * time.Second)
	for !strings.HasSuffix(p.out.String(), "\n[]") {
		if time.Now().After(deadline) {
			t.Fatalf("no empty list after the node left:\n%s", p.out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	p.cmd.Process.Signal(syscall.SIGINT)
	if code := p.exit(t, 10*time.Second); code != 0 {
		t.Fatalf("--watch exit code %d after SIGINT: %s", code, p.errs.String())
	}
}
