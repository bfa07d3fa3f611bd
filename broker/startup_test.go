package broker_test

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/pubmesh/pubmesh/discovery"
	"github.com/pubmesh/pubmesh/internal/embedetcd"
)

// A node started before etcd (a cold start of a whole site) waits for it,
// saying what it waits for, and joins once etcd answers, instead of exiting
// and crash-looping.
func TestAgentWaitsForEtcdAtStart(t *testing.T) {
	t.Parallel()
	srv, err := embedetcd.Start(embedetcd.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	srv.Stop()
	ecfg := discovery.EtcdConfig{Endpoints: []string{srv.Endpoint()}, DialTimeout: time.Second}
	if cli, err := discovery.Dial(context.Background(), ecfg); err == nil {
		cli.Close()
		t.Fatal("Dial succeeded with etcd stopped")
	}
	cli, err := discovery.Connect(ecfg)
	if err != nil {
		t.Fatalf("Connect with etcd stopped: %v", err)
	}
	t.Cleanup(func() { cli.Close() })
	reg, err := discovery.New(cli, discovery.Config{Cluster: fmt.Sprintf("wait-etcd-%d", os.Getpid()), Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	cfg := fastConfig(t, reg)
	var logs *syncBuffer
	cfg.Logger, logs = testLogs(t)
	a := start(t, cfg)

	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(logs.String(), "waiting for etcd") {
		if time.Now().After(deadline) {
			t.Fatal("the agent did not log that it waits for etcd")
		}
		select {
		case err := <-a.errc:
			t.Fatalf("Run returned while etcd was down: %v", err)
		case <-time.After(50 * time.Millisecond):
		}
	}
	if !strings.Contains(logs.String(), srv.Endpoint()) {
		t.Errorf("the wait does not name the endpoint %s", srv.Endpoint())
	}
	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-a.Ready():
	case err := <-a.errc:
		t.Fatalf("Run returned: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("not ready 30s after etcd came up")
	}
}

// A drain request made for an earlier incarnation of the node id (its agent
// crashed with its lease still alive, the request was never picked up) must
// not drain a new agent with that id, even one that started before the
// request was made; a request for the new agent's own registration does.
func TestAgentIgnoresADrainRequestForAnEarlierIncarnation(t *testing.T) {
	t.Parallel()
	reg := newRegistry(t)
	w := watch(t, reg)
	cfg := fastConfig(t, reg)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	old, err := reg.Register(ctx, discovery.Node{
		ID: cfg.ID, Addr: "127.0.0.1:1", State: discovery.StateReady, StartedAt: time.Now(), Version: "old", RunID: "old",
	}, discovery.RegisterOptions{TTL: cfg.LeaseTTL})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { old.Close(context.Background()) })
	oldInc := old.Node().Incarnation

	a := start(t, cfg)
	// Once the child runs, the agent's start (and its clearing of old
	// requests) is behind it.
	for a.PID() == 0 {
		select {
		case err := <-a.errc:
			t.Fatalf("Run returned: %v", err)
		case <-ctx.Done():
			t.Fatal("the child never started")
		case <-time.After(20 * time.Millisecond):
		}
	}
	if err := reg.RequestDrain(ctx, cfg.ID, "test"); err != nil {
		t.Fatal(err)
	}
	if err := old.Close(ctx); err != nil {
		t.Fatal(err)
	}
	w.until(t, 20*time.Second, "ready, registered anew", func(s discovery.Snapshot) bool {
		n, ok := node(s, cfg.ID)
		return ok && n.Incarnation != oldInc && n.State == discovery.StateReady
	})
	// The stale request is in etcd and the drain watch has looked at it.
	select {
	case err := <-a.errc:
		t.Fatalf("the new agent was drained by the old incarnation's request (Run = %v)", err)
	case <-time.After(time.Second):
	}
	if n, _ := node(w.last, cfg.ID); n.State != discovery.StateReady {
		t.Fatalf("node %+v, want ready", n)
	}

	if err := reg.RequestDrain(ctx, cfg.ID, "test"); err != nil {
		t.Fatal(err)
	}
	w.until(t, 20*time.Second, "gone after a drain of its own registration", gone(cfg.ID))
	select {
	case err := <-a.errc:
		if err != nil {
			t.Fatalf("Run after the drain = %v", err)
		}
	case <-ctx.Done():
		t.Fatal("Run did not return after the drain")
	}
}
