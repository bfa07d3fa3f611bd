package main

import (
	"fmt"
	"syscall"
	"testing"
	"time"

	"github.com/pubmesh/pubmesh/discovery"
	"github.com/pubmesh/pubmesh/internal/embedetcd"
)

// A node started before its etcd waits for it, saying so, and joins once
// etcd answers: a cold start with a slow etcd does not crash-loop. A node
// whose etcd never comes stops cleanly on SIGTERM.
func TestNodeWaitsForEtcd(t *testing.T) {
	t.Parallel()
	etcdAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	cluster := uniqueCluster(t)
	node := startPubmesh(t, "node", "--etcd", etcdAddr, "--cluster", cluster, "--id", "late", "--port", fmt.Sprint(freePort(t)),
		"--etcd-timeout", "500ms", "--log-level", "info")
	node.errs.wait(t, `waiting for etcd`, 30*time.Second)
	select {
	case <-node.done:
		t.Fatalf("node exited while etcd was down: %v\n%s", node.err, node.errs.String())
	case <-time.After(time.Second):
	}

	srv, err := embedetcd.Start(embedetcd.Config{ClientAddr: etcdAddr})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	reg := registryAt(t, srv.Endpoint(), cluster)
	watchUntil(t, reg, 60*time.Second, "the late node ready", func(s discovery.Snapshot) bool {
		return len(s.Ready()) == 1 && s.Ready()[0].ID == "late"
	})
	node.cmd.Process.Signal(syscall.SIGTERM)
	if code := node.exit(t, 30*time.Second); code != 0 {
		t.Errorf("exit %d after SIGTERM:\n%s", code, node.errs.String())
	}

	// etcd never comes: SIGTERM ends the wait, exit 0.
	never := startPubmesh(t, "node", "--etcd", fmt.Sprintf("127.0.0.1:%d", freePort(t)), "--cluster", cluster, "--port", fmt.Sprint(freePort(t)),
		"--etcd-timeout", "500ms", "--log-level", "info")
	never.errs.wait(t, `waiting for etcd`, 30*time.Second)
	never.cmd.Process.Signal(syscall.SIGTERM)
	if code := never.exit(t, 30*time.Second); code != 0 {
		t.Errorf("exit %d after SIGTERM while waiting for etcd:\n%s", code, never.errs.String())
	}
}
