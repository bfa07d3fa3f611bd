package main

import (
	"context"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pubmesh/pubmesh/discovery"
	"github.com/pubmesh/pubmesh/internal/testredis"
)

// nodeArgs are the flags of a quick test node.
func nodeArgs(cluster, id string, port int, extra ...string) []string {
	return append([]string{
		"node", "--etcd", etcdEndpoint, "--cluster", cluster, "--id", id,
		"--port", fmt.Sprint(port), "--health-interval", "100ms", "--health-failures", "3",
		"--join-timeout", "200ms", "--drain-timeout", "300ms", "--lease-ttl", "2s",
	}, extra...)
}

// A node joins, survives kill -9 of its redis-server (leaves the ready set,
// is restarted, comes back), and leaves on `pubmesh drain`.
func TestNodeJoinKillRestartDrain(t *testing.T) {
	t.Parallel()
	cluster := uniqueCluster(t)
	reg := registry(t, cluster)
	p := startPubmesh(t, nodeArgs(cluster, "n1", freePort(t))...)
	watchUntil(t, reg, 20*time.Second, "ready", func(s discovery.Snapshot) bool { return state(s, "n1") == discovery.StateReady })
	nodes := listNodes(t, cluster)
	if len(nodes) != 1 || nodes[0].ID != "n1" || nodes[0].State != discovery.StateReady {
		t.Fatalf("pubmesh nodes --json = %+v", nodes)
	}

	child := waitRedisChildren(t, p.cmd.Process.Pid, 1, 5*time.Second)[0]
	if err := syscall.Kill(child, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	took := watchUntil(t, reg, 5*time.Second, "out of the ready set", func(s discovery.Snapshot) bool { return state(s, "n1") != discovery.StateReady })
	t.Logf("kill -9 of the redis-server: node left the ready set after %s", took)
	watchUntil(t, reg, 20*time.Second, "ready again", func(s discovery.Snapshot) bool { return state(s, "n1") == discovery.StateReady })
	restarted := waitRedisChildren(t, p.cmd.Process.Pid, 1, 5*time.Second)[0]
	if restarted == child {
		t.Fatal("same redis-server pid after a restart")
	}

	r := runPubmesh(t, 30*time.Second, "drain", "--etcd", etcdEndpoint, "--cluster", cluster, "n1")
	if r.code != 0 || !strings.Contains(r.stdout, "node n1 has left") {
		t.Fatalf("pubmesh drain: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	if code := p.exit(t, 20*time.Second); code != 0 {
		t.Fatalf("node exit code %d after a drain; stderr:\n%s", code, p.errs.String())
	}
	waitGone(t, restarted, 5*time.Second)
	if n := listNodes(t, cluster); len(n) != 0 {
		t.Errorf("nodes after the drain: %+v", n)
	}
}

// SIGTERM drains: the node turns draining, then leaves, and the process
// exits 0 with its redis-server stopped. A registered fanout client that
// never acks holds the drain until --drain-timeout, which is logged with the
// client's id (without it the drain handshake ends in milliseconds).
func TestNodeSIGTERMDrains(t *testing.T) {
	t.Parallel()
	cluster := uniqueCluster(t)
	reg := registry(t, cluster)
	p := startPubmesh(t, nodeArgs(cluster, "n1", freePort(t), "--drain-timeout", "1s")...)
	watchUntil(t, reg, 20*time.Second, "ready", func(s discovery.Snapshot) bool { return state(s, "n1") == discovery.StateReady })
	child := waitRedisChildren(t, p.cmd.Process.Pid, 1, 5*time.Second)[0]
	silent, err := reg.RegisterClient(context.Background(), discovery.ClientInfo{ID: "silent-client"}, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close(context.Background())

	p.cmd.Process.Signal(syscall.SIGTERM)
	watchUntil(t, reg, 10*time.Second, "draining", func(s discovery.Snapshot) bool { return state(s, "n1") == discovery.StateDraining })
	took := watchUntil(t, reg, 10*time.Second, "gone", func(s discovery.Snapshot) bool { return state(s, "n1") == "" })
	if took < 500*time.Millisecond {
		t.Errorf("left %s after draining although a client never acked (drain timeout 1s)", took)
	}
	if code := p.exit(t, 20*time.Second); code != 0 {
		t.Fatalf("exit code %d after SIGTERM; stderr:\n%s", code, p.errs.String())
	}
	p.errs.wait(t, "drain handshake timed out.*silent-client", time.Second)
	waitGone(t, child, 5*time.Second)
}

// An agent killed with -9 cannot deregister: its redis-server dies with it
// (Pdeathsig) and its key disappears when the lease expires.
func TestNodeKill9LeaseExpires(t *testing.T) {
	t.Parallel()
	cluster := uniqueCluster(t)
	reg := registry(t, cluster)
	p := startPubmesh(t, nodeArgs(cluster, "n1", freePort(t))...)
	watchUntil(t, reg, 20*time.Second, "ready", func(s discovery.Snapshot) bool { return state(s, "n1") == discovery.StateReady })
	child := waitRedisChildren(t, p.cmd.Process.Pid, 1, 5*time.Second)[0]

	p.cmd.Process.Signal(syscall.SIGKILL)
	p.exit(t, 5*time.Second)
	waitGone(t, child, 5*time.Second)
	took := watchUntil(t, reg, 2*time.Second+5*time.Second, "gone by lease expiry", func(s discovery.Snapshot) bool { return state(s, "n1") == "" })
	t.Logf("agent killed: key expired after %s (lease TTL 2s)", took)
}

// --attach registers a Redis the agent did not start, and leaves it running.
func TestNodeAttach(t *testing.T) {
	t.Parallel()
	cluster := uniqueCluster(t)
	reg := registry(t, cluster)
	redis := testredis.New(t).Addr // a Redis that runs elsewhere
	p := startPubmesh(t, "node", "--etcd", etcdEndpoint, "--cluster", cluster, "--attach", redis, "--join-timeout", "200ms", "--drain-timeout", "200ms")
	var n discovery.Node
	watchUntil(t, reg, 20*time.Second, "ready", func(s discovery.Snapshot) bool {
		for _, x := range s.Nodes {
			if x.Addr == redis && x.State == discovery.StateReady {
				n = x
				return true
			}
		}
		return false
	})
	if !n.Attached {
		t.Errorf("attached node not marked attached: %+v", n)
	}
	_, port, _ := strings.Cut(redis, ":")
	if !strings.HasSuffix(n.ID, "-"+port) {
		t.Errorf("default id %q, want <hostname>-%s", n.ID, port)
	}
	p.cmd.Process.Signal(syscall.SIGINT)
	if code := p.exit(t, 20*time.Second); code != 0 {
		t.Fatalf("exit code %d; stderr:\n%s", code, p.errs.String())
	}
	if err := testredis.Ping(context.Background(), redis); err != nil {
		t.Errorf("the attached redis was stopped: %v", err)
	}
}
