package broker_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"regexp"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/pubmesh/pubmesh/broker"
	"github.com/pubmesh/pubmesh/discovery"
	"github.com/pubmesh/pubmesh/internal/embedetcd"
)

// etcdEndpoint is the embedded etcd shared by the tests of this package;
// each test uses its own cluster name. Tests that stop etcd start their own.
var etcdEndpoint string

func TestMain(m *testing.M) {
	srv, err := embedetcd.Start(embedetcd.Config{})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	etcdEndpoint = srv.Endpoint()
	code := m.Run()
	srv.Close()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

var clusterSeq atomic.Int64

// newRegistry returns a registry on the shared etcd (or on endpoint, if
// given) with a cluster name no other test uses.
func newRegistry(t *testing.T, endpoint ...string) *discovery.Registry {
	t.Helper()
	ep := etcdEndpoint
	if len(endpoint) > 0 {
		ep = endpoint[0]
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cli, err := discovery.Dial(ctx, discovery.EtcdConfig{Endpoints: []string{ep}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	name := regexp.MustCompile(`[^A-Za-z0-9]+`).ReplaceAllString(t.Name(), "-")
	reg, err := discovery.New(cli, discovery.Config{
		Cluster: fmt.Sprintf("%s-%d-%d", name, os.Getpid(), clusterSeq.Add(1)),
		Logger:  testLogger(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	return reg
}

// testLogger keeps the test's logs and prints them only if it fails.
func testLogger(t *testing.T) *slog.Logger {
	log, _ := testLogs(t)
	return log
}

// testLogs is testLogger that also returns the logs, for tests that check
// what the agent says.
func testLogs(t *testing.T) (*slog.Logger, *syncBuffer) {
	buf := &syncBuffer{}
	t.Cleanup(func() {
		if t.Failed() || os.Getenv("PUBMESH_TEST_LOGS") != "" {
			t.Logf("logs:\n%s", buf.String())
		}
	})
	return slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug})), buf
}

type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// Short intervals for tests; the margins in the assertions are generous
// because the test machine is small and shared.
const (
	testHealthInterval = 100 * time.Millisecond
	testHealthFailures = 3
)

// fastConfig is a Config with short intervals and a free port.
func fastConfig(t *testing.T, reg *discovery.Registry) broker.Config {
	return broker.Config{
		Registry:       reg,
		ID:             "node-" + fmt.Sprint(clusterSeq.Add(1)),
		Port:           freePort(t),
		DataDir:        t.TempDir(),
		HealthInterval: testHealthInterval,
		HealthFailures: testHealthFailures,
		JoinTimeout:    100 * time.Millisecond,
		DrainTimeout:   200 * time.Millisecond,
		LeaseTTL:       2 * time.Second,
		StopTimeout:    2 * time.Second,
		Logger:         testLogger(t),
	}
}

// started is a running agent and the result of its Run.
type started struct {
	*broker.Agent
	errc chan error // receives Run's result
}

// start runs an agent and stops it when the test ends.
func start(t *testing.T, cfg broker.Config) *started {
	t.Helper()
	a, err := broker.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	s := &started{Agent: a, errc: make(chan error, 1)}
	go func() { s.errc <- a.Run(context.Background()) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if err := a.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		if pid := a.PID(); pid != 0 {
			t.Errorf("redis-server %d still recorded after Shutdown", pid)
		}
	})
	return s
}

// watcher follows the registry of a test.
type watcher struct {
	ch   <-chan discovery.Snapshot
	last discovery.Snapshot
}

func watch(t *testing.T, reg *discovery.Registry) *watcher {
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	return &watcher{ch: reg.Watch(ctx, discovery.WatchOptions{})}
}

// until waits for a snapshot that satisfies ok and returns how long that
// took; it fails the test after timeout.
func (w *watcher) until(t *testing.T, timeout time.Duration, what string, ok func(discovery.Snapshot) bool) time.Duration {
	t.Helper()
	t0 := time.Now()
	if ok(w.last) && w.last.Revision != 0 {
		return 0
	}
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		select {
		case s := <-w.ch:
			w.last = s
			if ok(s) {
				return time.Since(t0)
			}
		case <-deadline.C:
			t.Fatalf("after %s: still not %s; last snapshot: %+v", timeout, what, w.last)
		}
	}
}

func node(s discovery.Snapshot, id string) (discovery.Node, bool) {
	for _, n := range s.Nodes {
		if n.ID == id {
			return n, true
		}
	}
	return discovery.Node{}, false
}

func inState(id string, st discovery.State) func(discovery.Snapshot) bool {
	return func(s discovery.Snapshot) bool {
		n, ok := node(s, id)
		return ok && n.State == st
	}
}

func notReady(id string) func(discovery.Snapshot) bool {
	return func(s discovery.Snapshot) bool {
		n, ok := node(s, id)
		return !s.Stale && (!ok || n.State != discovery.StateReady)
	}
}

func gone(id string) func(discovery.Snapshot) bool {
	return func(s discovery.Snapshot) bool {
		_, ok := node(s, id)
		return !s.Stale && !ok
	}
}

// processGone reports whether pid no longer names a live process.
func processGone(pid int) bool {
	_, err := os.Stat(fmt.Sprintf("/proc/%d", pid))
	return os.IsNotExist(err)
}

func waitProcessGone(t *testing.T, pid int, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !processGone(pid) {
		if time.Now().After(deadline) {
			t.Fatalf("process %d still alive after %s", pid, timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
