package main

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/pubmesh/pubmesh/discovery"
	"github.com/pubmesh/pubmesh/internal/testredis"
	"github.com/pubmesh/pubmesh/pubmeshtest"
)

// eventually runs the command until ok accepts its result, for at most
// timeout, and returns that result.
func eventually(t *testing.T, timeout time.Duration, what string, ok func(result) bool, args ...string) result {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		r := runPubmesh(t, 30*time.Second, args...)
		if r.code == 0 && ok(r) {
			return r
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %s, not %s: pubmesh %s: exit %d\n%s%s", timeout, what, strings.Join(args, " "), r.code, r.stdout, r.stderr)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// A node follows the cluster configuration (--pubsub-buffer-limit not
// given: the cluster's applies) except where a flag overrides it
// (--maxmemory 64mb stays after the cluster says 128mb), says so once at
// start, and `pubmesh nodes` shows the revision it runs.
func TestNodeFollowsClusterConfig(t *testing.T) {
	t.Parallel()
	cluster := uniqueCluster(t)
	reg := registry(t, cluster)
	port := freePort(t)
	p := startPubmesh(t, nodeArgs(cluster, "n1", port, "--maxmemory", "64mb")...)
	watchUntil(t, reg, 20*time.Second, "ready", func(s discovery.Snapshot) bool { return state(s, "n1") == discovery.StateReady })

	rev := pubmeshtest.ApplyConfig(t, reg, "node: {maxmemory: 128mb, output_buffer_limit: 32mb 8mb 30}")
	nodesArgs := []string{"nodes", "--etcd", etcdEndpoint, "--cluster", cluster}
	r := eventually(t, 10*time.Second, fmt.Sprintf("at revision %d", rev), func(r result) bool {
		lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
		return len(lines) == 2 && len(strings.Fields(lines[1])) == 8 && strings.Fields(lines[1])[6] == strconv.FormatInt(rev, 10)
	}, nodesArgs...)
	if h := strings.Fields(strings.SplitN(r.stdout, "\n", 2)[0]); len(h) != 8 || h[6] != "CONFIG" {
		t.Errorf("header %q: want CONFIG as the 7th column", h)
	}
	nodes := listNodes(t, cluster)
	if len(nodes) != 1 || nodes[0].ConfigRevision != rev {
		t.Errorf("nodes --json = %+v, want config_revision %d", nodes, rev)
	}

	rdb := redis.NewClient(&redis.Options{Addr: fmt.Sprintf("127.0.0.1:%d", port), MaxRetries: -1, DisableIdentity: true})
	defer rdb.Close()
	got, err := rdb.ConfigGet(context.Background(), "*").Result()
	if err != nil {
		t.Fatal(err)
	}
	if got["maxmemory"] != "67108864" {
		t.Errorf("maxmemory = %s, want 67108864 (--maxmemory 64mb wins over the cluster's 128mb)", got["maxmemory"])
	}
	if !strings.HasSuffix(got["client-output-buffer-limit"], "pubsub 33554432 8388608 30") {
		t.Errorf("client-output-buffer-limit = %q, want the cluster's pubsub 32mb 8mb 30 (no --pubsub-buffer-limit given)", got["client-output-buffer-limit"])
	}
	logs := p.errs.String()
	if n := strings.Count(logs, `msg="config: flag overrides the cluster configuration" node=n1 key=node.maxmemory value=67108864`); n != 1 {
		t.Errorf("%d override lines for node.maxmemory, want 1:\n%s", n, logs)
	}
	if strings.Contains(logs, "key=node.output_buffer_limit") {
		t.Errorf("an override line for node.output_buffer_limit, which was not given:\n%s", logs)
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	if code := p.exit(t, 20*time.Second); code != 0 {
		t.Fatalf("node exit code %d; stderr:\n%s", code, p.errs.String())
	}
}

// `pubmesh clients` lists a running subscriber with its role and the
// revision it runs, and says how many parts lag behind the cluster's
// revision.
func TestClientsListsRevisions(t *testing.T) {
	t.Parallel()
	cluster := uniqueCluster(t)
	reg := registry(t, cluster)
	srv := testredis.New(t)
	g := register(t, reg, "n1", srv.Addr, discovery.StateReady) // runs revision 0
	rev1 := pubmeshtest.ApplyConfig(t, reg, "gateway: {max_subscriptions: 5}")

	sub := startPubmesh(t, "subscribe", "--etcd", etcdEndpoint, "--cluster", cluster, "--log-level", "info", "news")
	sub.errs.wait(t, "subscribed", 30*time.Second)
	pid := strconv.Itoa(sub.cmd.Process.Pid)
	args := []string{"clients", "--etcd", etcdEndpoint, "--cluster", cluster}

	r := runPubmesh(t, 30*time.Second, args...)
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if r.code != 0 || len(lines) != 3 {
		t.Fatalf("pubmesh clients: exit %d:\n%s%s", r.code, r.stdout, r.stderr)
	}
	if h := strings.Fields(lines[0]); strings.Join(h, " ") != "ID ROLE HOST PID VERSION CONFIG STARTED" {
		t.Errorf("header %q", lines[0])
	}
	if f := strings.Fields(lines[1]); len(f) != 8 || !strings.HasPrefix(f[0], "cli-") || f[1] != "subscribe" || f[3] != pid ||
		f[5] != strconv.FormatInt(rev1, 10) || f[7] != "ago" {
		t.Errorf("row %q: want cli-... subscribe HOST %s VERSION %d Ns ago", lines[1], pid, rev1)
	}
	if want := fmt.Sprintf("config: 1 of 2 parts runs an older revision than %d", rev1); lines[2] != want {
		t.Errorf("last line %q, want %q", lines[2], want)
	}

	r = runPubmesh(t, 30*time.Second, append(args, "--json")...)
	var clients []map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &clients); err != nil {
		t.Fatalf("--json: %v: %q", err, r.stdout)
	}
	if len(clients) != 1 || clients[0]["role"] != "subscribe" || clients[0]["config_revision"] != float64(rev1) || fmt.Sprint(clients[0]["pid"]) != pid {
		t.Errorf("--json = %s", r.stdout)
	}
	if !strings.Contains(r.stderr, "1 of 2 parts runs an older revision") {
		t.Errorf("--json: no summary on stderr: %q", r.stderr)
	}

	// A new revision: the subscriber follows within a second, and once the
	// node has too the whole cluster has caught up.
	rev2 := pubmeshtest.ApplyConfig(t, reg, "gateway: {max_subscriptions: 6}")
	if err := g.Update(context.Background(), func(n *discovery.Node) { n.ConfigRevision = rev2 }); err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("config: every part (1 node, 1 client) runs revision %d", rev2)
	eventually(t, 5*time.Second, "caught up", func(r result) bool { return strings.HasSuffix(strings.TrimSpace(r.stdout), want) }, args...)

	sub.cmd.Process.Signal(syscall.SIGINT)
	if code := sub.exit(t, 20*time.Second); code != 0 {
		t.Errorf("subscribe exit %d: %s", code, sub.errs.String())
	}
	r = runPubmesh(t, 30*time.Second, args...)
	if want := fmt.Sprintf("config: every part (1 node, 0 clients) runs revision %d", rev2); !strings.HasSuffix(strings.TrimSpace(r.stdout), want) {
		t.Errorf("after the subscriber left:\n%s\nwant last line %q", r.stdout, want)
	}
}
