package broker_test

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/pubmesh/pubmesh/broker"
	"github.com/pubmesh/pubmesh/discovery"
	"github.com/pubmesh/pubmesh/internal/embedetcd"
	"github.com/pubmesh/pubmesh/internal/freeport"
	"github.com/pubmesh/pubmesh/internal/testredis"
	"github.com/pubmesh/pubmesh/internal/version"
)

func freePort(t *testing.T) int {
	t.Helper()
	p, err := freeport.Get()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// leaveBound is how long a node may take to leave the ready set after its
// Redis dies or hangs: health-interval × health-failures, plus the PING
// timeout, plus a margin for a loaded machine.
const leaveBound = testHealthInterval*testHealthFailures + testHealthInterval/2 + 2*time.Second

func TestAgentRegistersAndWatch(t *testing.T) {
	t.Parallel()
	reg := newRegistry(t)
	w := watch(t, reg)
	cfg := fastConfig(t, reg)
	a := start(t, cfg)

	w.until(t, 15*time.Second, "joining", inState(cfg.ID, discovery.StateJoining))
	w.until(t, 15*time.Second, "ready", inState(cfg.ID, discovery.StateReady))
	select {
	case <-a.Ready():
	case <-time.After(5 * time.Second):
		t.Fatal("Ready() not closed although the node is ready in the registry")
	}
	n, _ := node(w.last, cfg.ID)
	wantAddr := "127.0.0.1:" + strconv.Itoa(cfg.Port)
	switch {
	case n.Addr != wantAddr:
		t.Errorf("Addr = %q, want %q", n.Addr, wantAddr)
	case n.Version != version.Version:
		t.Errorf("Version = %q, want %q", n.Version, version.Version)
	case !strings.HasPrefix(n.RedisVersion, "7."):
		t.Errorf("RedisVersion = %q, want 7.x", n.RedisVersion)
	case len(n.RunID) != 40:
		t.Errorf("RunID = %q, want redis's 40-character run_id", n.RunID)
	case n.Attached:
		t.Error("Attached = true for a node with its own redis-server")
	case time.Since(n.StartedAt) > time.Minute || time.Since(n.StartedAt) < 0:
		t.Errorf("StartedAt = %v, want just now", n.StartedAt)
	}
	if err := testredis.Ping(context.Background(), n.Addr); err != nil {
		t.Fatalf("registered addr does not answer PING: %v", err)
	}

	// The child's redis.conf: private, no persistence, protected mode.
	conf := filepath.Join(cfg.DataDir, "redis.conf")
	st, err := os.Stat(conf)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("redis.conf mode %v, want 0600", st.Mode().Perm())
	}
	b, _ := os.ReadFile(conf)
	for _, want := range []string{`save ""`, "appendonly no", "protected-mode yes", "client-output-buffer-limit pubsub 67108864 16777216 60"} {
		if !strings.Contains(string(b), want+"\n") {
			t.Errorf("redis.conf lacks %q:\n%s", want, b)
		}
	}

	pid := a.PID()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := a.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if err := a.Shutdown(ctx); err != nil {
		t.Fatalf("second Shutdown: %v", err)
	}
	if err := <-a.errc; err != nil {
		t.Fatalf("Run after Shutdown = %v, want nil", err)
	}
	w.until(t, 5*time.Second, "gone", gone(cfg.ID))
	waitProcessGone(t, pid, 5*time.Second)
}

func TestAgentChildKilledOrStopped(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		signal syscall.Signal
	}{
		{"kill -9", syscall.SIGKILL},
		{"SIGSTOP", syscall.SIGSTOP},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			reg := newRegistry(t)
			w := watch(t, reg)
			cfg := fastConfig(t, reg)
			a := start(t, cfg)
			w.until(t, 15*time.Second, "ready", inState(cfg.ID, discovery.StateReady))
			before, _ := node(w.last, cfg.ID)
			pid := a.PID()
			if pid == 0 {
				t.Fatal("no child pid")
			}
			if err := syscall.Kill(pid, tc.signal); err != nil {
				t.Fatal(err)
			}
			if tc.signal == syscall.SIGSTOP {
				t.Cleanup(func() { syscall.Kill(pid, syscall.SIGCONT) })
			}
			took := w.until(t, leaveBound, "out of the ready set", notReady(cfg.ID))
			t.Logf("%s: node left the ready set after %s (bound %s)", tc.name, took, leaveBound)
			if _, ok := node(w.last, cfg.ID); ok {
				t.Errorf("node still has a key after leaving: %+v", w.last.Nodes)
			}

			if tc.signal == syscall.SIGSTOP {
				// A hung Redis that wakes up comes back: joining, then ready,
				// the same server (same run_id).
				if err := syscall.Kill(pid, syscall.SIGCONT); err != nil {
					t.Fatal(err)
				}
				w.until(t, 15*time.Second, "ready again", inState(cfg.ID, discovery.StateReady))
				after, _ := node(w.last, cfg.ID)
				if after.RunID != before.RunID {
					t.Errorf("run_id changed after SIGCONT: %s -> %s", before.RunID, after.RunID)
				}
				return
			}
			// A crashed child is restarted and the node comes back with a
			// new run_id.
			w.until(t, 15*time.Second, "ready again", inState(cfg.ID, discovery.StateReady))
			after, _ := node(w.last, cfg.ID)
			if after.RunID == before.RunID {
				t.Errorf("run_id unchanged after a restart: %s", after.RunID)
			}
			if np := a.PID(); np == pid || np == 0 {
				t.Errorf("child pid after restart = %d, before %d", np, pid)
			}
			waitProcessGone(t, pid, 5*time.Second)
		})
	}
}

func TestAgentDrainRequest(t *testing.T) {
	t.Parallel()
	reg := newRegistry(t)
	w := watch(t, reg)
	cfg := fastConfig(t, reg)
	cfg.DrainTimeout = 500 * time.Millisecond
	var drained atomic.Value // the node the DrainGate saw
	cfg.DrainGate = func(ctx context.Context, n discovery.Node) error {
		drained.Store(n)
		<-ctx.Done()
		return nil
	}
	a := start(t, cfg)
	w.until(t, 15*time.Second, "ready", inState(cfg.ID, discovery.StateReady))
	pid := a.PID()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := reg.RequestDrain(ctx, cfg.ID, "test"); err != nil {
		t.Fatal(err)
	}
	w.until(t, 10*time.Second, "draining", inState(cfg.ID, discovery.StateDraining))
	took := w.until(t, 10*time.Second, "gone", gone(cfg.ID))
	if took < cfg.DrainTimeout/2 {
		t.Errorf("key deleted %s after draining, before the drain gate's %s", took, cfg.DrainTimeout)
	}
	select {
	case err := <-a.errc:
		if err != nil {
			t.Fatalf("Run after drain = %v, want nil", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after the drain")
	}
	if n, _ := drained.Load().(discovery.Node); n.State != discovery.StateDraining {
		t.Errorf("DrainGate saw state %q, want draining", n.State)
	}
	waitProcessGone(t, pid, 5*time.Second)
	// The request is cleared, so a new agent with the id is not drained.
	resp, err := reg.Client().Get(ctx, "/pubmesh/"+reg.Cluster()+"/drain/"+cfg.ID)
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) != 0 {
		t.Errorf("drain request still in etcd after the drain")
	}
}

func TestAgentJoinGate(t *testing.T) {
	t.Parallel()
	reg := newRegistry(t)
	w := watch(t, reg)
	cfg := fastConfig(t, reg)
	release := make(chan struct{})
	var calls atomic.Int32
	cfg.JoinGate = func(ctx context.Context, n discovery.Node) error {
		calls.Add(1)
		if n.State != discovery.StateJoining || n.RunID == "" {
			return errors.New("gate called with an unexpected node")
		}
		select {
		case <-release:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	start(t, cfg)
	w.until(t, 15*time.Second, "joining", inState(cfg.ID, discovery.StateJoining))
	time.Sleep(500 * time.Millisecond) // well past JoinTimeout: the gate holds it
	if n, _ := node(w.last, cfg.ID); n.State != discovery.StateJoining {
		t.Fatalf("state %q while the join gate holds", n.State)
	}
	close(release)
	w.until(t, 10*time.Second, "ready", inState(cfg.ID, discovery.StateReady))
	if c := calls.Load(); c != 1 {
		t.Errorf("JoinGate called %d times, want 1", c)
	}
}

func TestAgentShutdownBoundsDrainGate(t *testing.T) {
	t.Parallel()
	reg := newRegistry(t)
	w := watch(t, reg)
	cfg := fastConfig(t, reg)
	cfg.DrainTimeout = time.Hour
	cfg.DrainGate = func(ctx context.Context, n discovery.Node) error {
		<-ctx.Done() // a gate that waits for ever, but honours ctx
		return ctx.Err()
	}
	a := start(t, cfg)
	w.until(t, 15*time.Second, "ready", inState(cfg.ID, discovery.StateReady))
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	t0 := time.Now()
	err := a.Shutdown(ctx)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Shutdown = %v, want DeadlineExceeded", err)
	}
	if took := time.Since(t0); took > 10*time.Second {
		t.Errorf("Shutdown took %s with a 500ms context", took)
	}
	w.until(t, 5*time.Second, "gone", gone(cfg.ID))
	if a.PID() != 0 {
		t.Error("child still recorded after Shutdown")
	}
}

func TestAgentRunCancel(t *testing.T) {
	t.Parallel()
	reg := newRegistry(t)
	w := watch(t, reg)
	cfg := fastConfig(t, reg)
	a, err := broker.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- a.Run(ctx) }()
	w.until(t, 15*time.Second, "ready", inState(cfg.ID, discovery.StateReady))
	pid := a.PID()
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Errorf("Run = %v, want context.Canceled", err)
	}
	w.until(t, 5*time.Second, "gone", gone(cfg.ID))
	waitProcessGone(t, pid, 5*time.Second)
	if err := a.Run(context.Background()); err == nil {
		t.Error("second Run returned nil")
	}
	if err := a.Shutdown(context.Background()); err != nil {
		t.Errorf("Shutdown after Run returned: %v", err)
	}
}

func TestAgentShutdownBeforeRun(t *testing.T) {
	t.Parallel()
	a, err := broker.New(fastConfig(t, newRegistry(t)))
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Shutdown(context.Background()); err != nil {
		t.Fatalf("Shutdown before Run: %v", err)
	}
	if err := a.Run(context.Background()); !errors.Is(err, broker.ErrClosed) {
		t.Fatalf("Run after Shutdown = %v, want ErrClosed", err)
	}
	select {
	case <-a.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("Done not closed after Run returned ErrClosed")
	}
	if err := a.Run(context.Background()); !errors.Is(err, broker.ErrClosed) {
		t.Fatalf("second Run after Shutdown = %v, want ErrClosed", err)
	}
}

func TestAgentAttach(t *testing.T) {
	t.Parallel()
	reg := newRegistry(t)
	w := watch(t, reg)
	srv := testredis.New(t)
	cfg := fastConfig(t, reg)
	cfg.Attach = srv.Addr
	cfg.Port = 0
	a := start(t, cfg)
	w.until(t, 15*time.Second, "ready", inState(cfg.ID, discovery.StateReady))
	n, _ := node(w.last, cfg.ID)
	if !n.Attached || n.Addr != srv.Addr {
		t.Errorf("attached node = %+v, want Attached and Addr %s", n, srv.Addr)
	}
	if a.PID() != 0 {
		t.Error("an attached agent reports a child pid")
	}

	srv.Kill()
	took := w.until(t, leaveBound, "out of the ready set", notReady(cfg.ID))
	t.Logf("attached redis killed: node left after %s", took)
	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	w.until(t, 15*time.Second, "ready again", inState(cfg.ID, discovery.StateReady))

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := a.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	w.until(t, 5*time.Second, "gone", gone(cfg.ID))
	if err := testredis.Ping(ctx, srv.Addr); err != nil {
		t.Errorf("the attached redis was stopped by the agent: %v", err)
	}
}

func TestAgentLeaseLostAndEtcdRestart(t *testing.T) {
	t.Parallel()
	srv, err := embedetcd.Start(embedetcd.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	reg := newRegistry(t, srv.Endpoint())
	w := watch(t, reg)
	cfg := fastConfig(t, reg)
	cfg.LeaseTTL = time.Second
	start(t, cfg)
	w.until(t, 15*time.Second, "ready", inState(cfg.ID, discovery.StateReady))

	// etcd down for several TTLs: the watcher keeps the last set (stale);
	// when etcd is back the node is ready again, whether its lease
	// survived the outage or it had to register again.
	t0 := time.Now()
	srv.Stop()
	w.until(t, 10*time.Second, "stale", func(s discovery.Snapshot) bool { return s.Stale })
	time.Sleep(3 * cfg.LeaseTTL)
	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	t.Logf("etcd restarted %s after it stopped", time.Since(t0))
	w.until(t, 20*time.Second, "ready after the etcd restart", func(s discovery.Snapshot) bool {
		return !s.Stale && inState(cfg.ID, discovery.StateReady)(s)
	})
	t.Logf("node ready %s after etcd stopped", time.Since(t0))

	// A lease revoked behind the agent's back (as when etcd expired it):
	// the node registers again and comes back.
	n, _ := node(w.last, cfg.ID)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := reg.Client().Get(ctx, reg.NodeKey(cfg.ID))
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("get node key: %v %v", err, resp)
	}
	// With a 1 s TTL on a loaded machine the lease may expire on its own
	// between the Get and the Revoke: gone either way, which is the case
	// under test.
	if _, err := reg.Client().Revoke(ctx, clientv3.LeaseID(resp.Kvs[0].Lease)); err != nil && !errors.Is(err, rpctypes.ErrLeaseNotFound) {
		t.Fatal(err)
	}
	// The agent registers again within milliseconds, so the watcher (latest
	// snapshot wins) may never show the key gone: a new incarnation (the
	// key's create revision) is what proves it was deleted and made again.
	took := w.until(t, 20*time.Second, "ready again, registered anew", func(s discovery.Snapshot) bool {
		m, ok := node(s, cfg.ID)
		return ok && m.Incarnation != n.Incarnation && m.State == discovery.StateReady
	})
	t.Logf("ready again %s after the lease was revoked", took)
	if m, _ := node(w.last, cfg.ID); m.RunID != n.RunID {
		t.Errorf("run_id changed although redis did not restart")
	}
}

func TestAgentMetrics(t *testing.T) {
	t.Parallel()
	reg := newRegistry(t)
	w := watch(t, reg)
	cfg := fastConfig(t, reg)
	pr := prometheus.NewRegistry()
	cfg.Registerer = prometheus.WrapRegistererWith(prometheus.Labels{"node": cfg.ID}, pr)
	a := start(t, cfg)
	w.until(t, 15*time.Second, "ready", inState(cfg.ID, discovery.StateReady))
	time.Sleep(3 * cfg.HealthInterval) // a few health checks with INFO

	want := map[string]float64{
		`pubmesh_node_state{node="` + cfg.ID + `",state="ready"}`:   1,
		`pubmesh_node_state{node="` + cfg.ID + `",state="joining"}`: 0,
		`pubmesh_node_redis_up{node="` + cfg.ID + `"}`:              1,
	}
	got := gather(t, pr)
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %v, want %v", k, got[k], v)
		}
	}
	if got[`pubmesh_node_redis_connected_clients{node="`+cfg.ID+`"}`] < 1 {
		t.Errorf("connected_clients < 1 (the agent's own probe is a client)")
	}
	if n, err := count(pr, "pubmesh_node_ping_seconds"); err != nil || n != 1 {
		t.Errorf("ping histogram: %d series, %v", n, err)
	}
	for _, name := range []string{"pubmesh_node_redis_pubsub_channels", "pubmesh_node_redis_pubsub_patterns", "pubmesh_node_redis_restarts_total", "pubmesh_node_leaves_total"} {
		if n, err := count(pr, name); err != nil || n == 0 {
			t.Errorf("%s missing: %v", name, err)
		}
	}

	// A second agent on the same registerer and node label is refused.
	if _, err := broker.New(cfg); err == nil {
		t.Error("New with a registerer that already has this node's metrics: no error")
	}
	pid := a.PID()
	before, _ := node(w.last, cfg.ID)
	syscall.Kill(pid, syscall.SIGKILL)
	// Ready again with the new Redis's run: a.PID() alone is 0 (not pid)
	// as soon as the agent saw the exit, while the last snapshot may still
	// show the old registration ready.
	w.until(t, 15*time.Second, "ready after restart", func(s discovery.Snapshot) bool {
		n, ok := node(s, cfg.ID)
		return ok && n.State == discovery.StateReady && n.RunID != before.RunID
	})
	got = gather(t, pr)
	if v := got[`pubmesh_node_redis_restarts_total{node="`+cfg.ID+`"}`]; v != 1 {
		t.Errorf("restarts_total = %v, want 1", v)
	}
	// The node left once. Usually the child's exit is seen first; on a
	// loaded machine the missed health PINGs may win the race.
	exit := got[`pubmesh_node_leaves_total{node="`+cfg.ID+`",reason="exit"}`]
	health := got[`pubmesh_node_leaves_total{node="`+cfg.ID+`",reason="health"}`]
	if exit+health != 1 {
		t.Errorf(`leaves_total{reason="exit"} + {reason="health"} = %v + %v, want 1`, exit, health)
	}
}

// count is the number of series of the metric family name.
func count(g prometheus.Gatherer, name string) (int, error) {
	mfs, err := g.Gather()
	if err != nil {
		return 0, err
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return len(mf.GetMetric()), nil
		}
	}
	return 0, nil
}

// gather flattens the registry into "name{labels}" -> value for gauges and
// counters.
func gather(t *testing.T, g prometheus.Gatherer) map[string]float64 {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, l.GetName()+`="`+l.GetValue()+`"`)
			}
			key := mf.GetName() + "{" + strings.Join(labels, ",") + "}"
			switch {
			case m.Gauge != nil:
				out[key] = m.GetGauge().GetValue()
			case m.Counter != nil:
				out[key] = m.GetCounter().GetValue()
			}
		}
	}
	return out
}

func TestAgentStartErrors(t *testing.T) {
	t.Parallel()
	reg := newRegistry(t)
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { taken.Close() }) // the subtests run after this function returns
	takenPort := taken.Addr().(*net.TCPAddr).Port

	// A "redis-server" that exits at once, as one does with a bad config.
	fake := filepath.Join(t.TempDir(), "redis-server")
	if err := os.WriteFile(fake, []byte("#!/bin/sh\necho '1:M 01 Jan 2026 00:00:00.000 # Fatal error, cannot start'\nexit 1\n"), 0o755); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name  string
		edit  func(*broker.Config)
		want  string // in the error
		atNew bool   // New fails, not Run
	}{
		{"port taken", func(c *broker.Config) { c.Port = takenPort }, "already in use", true},
		{"missing binary", func(c *broker.Config) { c.RedisServer = "/nonexistent/redis-server" }, "not found", true},
		{"attach no port", func(c *broker.Config) { c.Attach = "nohost" }, "invalid attach address", true},
		{"attach bad port", func(c *broker.Config) { c.Attach = "1.2.3.4:99999" }, "port must be 1-65535", true},
		{"attach no host", func(c *broker.Config) { c.Attach = ":6379" }, "missing host", true},
		{"bad id", func(c *broker.Config) { c.ID = "a/b" }, "invalid id", true},
		{"bad bind", func(c *broker.Config) { c.Bind = "localhost:1" }, "invalid bind", true},
		{"lease too short", func(c *broker.Config) { c.LeaseTTL = 100 * time.Millisecond }, "lease TTL", true},
		{"no registry", func(c *broker.Config) { c.Registry = nil }, "Registry is required", true},
		{"redis exits at start", func(c *broker.Config) { c.RedisServer = fake }, "exited at start (exit status 1: Fatal error, cannot start)", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cfg := fastConfig(t, reg)
			tc.edit(&cfg)
			a, err := broker.New(cfg)
			if !tc.atNew {
				if err != nil {
					t.Fatalf("New: %v", err)
				}
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				defer cancel()
				err = a.Run(ctx)
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error = %v, want one containing %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("error is not one line: %q", err)
			}
			if got := errors.Is(err, broker.ErrPortInUse); got != (tc.name == "port taken") {
				t.Errorf("errors.Is(%v, ErrPortInUse) = %v", err, got)
			}
		})
	}
}

func TestAgentDuplicateID(t *testing.T) {
	t.Parallel()
	reg := newRegistry(t)
	w := watch(t, reg)
	cfg := fastConfig(t, reg)
	cfg.LeaseTTL = time.Second
	start(t, cfg)
	w.until(t, 15*time.Second, "ready", inState(cfg.ID, discovery.StateReady))

	dup := cfg
	dup.Port = freePort(t)
	dup.DataDir = t.TempDir()
	a, err := broker.New(dup)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	err = a.Run(ctx)
	if err == nil || !strings.Contains(err.Error(), "already registered") {
		t.Fatalf("Run with a live node's id = %v, want an 'already registered' error", err)
	}
	if n, _ := node(w.last, cfg.ID); n.Addr != "127.0.0.1:"+strconv.Itoa(cfg.Port) {
		t.Errorf("the first node's value changed: %+v", n)
	}
}

func TestParseBufferLimit(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in   string
		want broker.BufferLimit
		err  bool
	}{
		{"64mb 16mb 60", broker.DefaultOutputBufferLimit, false},
		{"1gb 0 0", broker.BufferLimit{Hard: 1 << 30}, false},
		{"1024 512kb 5", broker.BufferLimit{Hard: 1024, Soft: 512 << 10, SoftFor: 5 * time.Second}, false},
		{"64mb 16mb", broker.BufferLimit{}, true},
		{"x 1 1", broker.BufferLimit{}, true},
		{"1 1 -1", broker.BufferLimit{}, true},
	} {
		got, err := broker.ParseBufferLimit(tc.in)
		if (err != nil) != tc.err || got != tc.want {
			t.Errorf("ParseBufferLimit(%q) = %+v, %v; want %+v, err %v", tc.in, got, err, tc.want, tc.err)
		}
	}
}
