package fanout_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/pubmesh/pubmesh/broker"
	"github.com/pubmesh/pubmesh/fanout"
	"github.com/pubmesh/pubmesh/internal/freeport"
)

// quietLog shows warnings only when PUBMESH_TEST_LOG is set.
// portTaken recognises the error of an agent whose port another program
// took (freeport.Use then tries another).
func portTaken(err error) bool { return errors.Is(err, broker.ErrPortInUse) }

func quietLog() *slog.Logger {
	if os.Getenv("PUBMESH_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// agent starts a real node agent (its own redis-server) that uses the join
// and drain handshakes, and stops it when the test ends.
func (e *env) agent(id string) *broker.Agent {
	e.t.Helper()
	log := quietLog()
	var a *broker.Agent
	err := freeport.Use(func(port int) (err error) {
		a, err = broker.New(broker.Config{
			Registry: e.reg, ID: id, Port: port, DataDir: e.t.TempDir(),
			HealthInterval: 100 * time.Millisecond, HealthFailures: 3, LeaseTTL: 2 * time.Second,
			DrainTimeout: 15 * time.Second, Logger: log.With("node", id),
			JoinGate:  broker.JoinHandshake(e.reg, 15*time.Second, log),
			DrainGate: broker.DrainHandshake(e.reg, func(addr string) *redis.Options { return &redis.Options{Addr: addr} }, log),
		})
		return err
	}, portTaken)
	if err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	go a.Run(ctx)
	e.t.Cleanup(func() {
		sctx, scancel := context.WithTimeout(context.Background(), 20*time.Second)
		a.Shutdown(sctx)
		scancel()
		cancel()
		<-a.Done()
	})
	return a
}

func waitReady(t *testing.T, a *broker.Agent) {
	t.Helper()
	select {
	case <-a.Ready():
	case <-time.After(30 * time.Second):
		t.Fatalf("node %s not ready within 30s", a.ID())
	}
}

// sink counts what one subscriber receives, per publisher and channel.
type sink struct {
	mu       sync.Mutex
	got      map[[2]int]bool // {publisher, seq}
	last     map[string]int  // "<publisher>/<channel>" -> last seq
	dups     int
	outOrder int
	total    atomic.Int64
}

func newSink(t *testing.T, s *fanout.Subscription) *sink {
	k := &sink{got: map[[2]int]bool{}, last: map[string]int{}}
	go func() {
		for m := range s.Messages() {
			p, i, ok := strings.Cut(string(m.Payload), ":")
			if !ok {
				t.Errorf("unexpected payload %q", m.Payload)
				continue
			}
			pi, _ := strconv.Atoi(p)
			si, _ := strconv.Atoi(i)
			k.mu.Lock()
			key := [2]int{pi, si}
			if k.got[key] {
				k.dups++
			}
			k.got[key] = true
			lk := p + "/" + m.Channel
			if l, seen := k.last[lk]; seen && si < l {
				k.outOrder++
			}
			k.last[lk] = si
			k.mu.Unlock()
			k.total.Add(1)
		}
	}()
	return k
}

// load is two publishers at a steady rate into 8 channels and three
// subscribers.
type load struct {
	t       *testing.T
	pubs    []*fanout.Client
	sinks   []*sink
	stop    chan struct{}
	wg      sync.WaitGroup
	mu      sync.Mutex
	ok      map[[2]int]bool // publishes that returned nil
	failed  int
	slowest time.Duration // longest Publish call
	started time.Time
}

var loadChannels = []string{"c0", "c1", "c2", "c3", "c4", "c5", "c6", "c7"}

func startLoad(t *testing.T, e *env, cfg fanout.Config, interval time.Duration) *load {
	t.Helper()
	cfg.Logger = quietLog()
	l := &load{t: t, stop: make(chan struct{}), ok: map[[2]int]bool{}, started: time.Now()}
	for range 3 {
		c := e.client(cfg)
		s, err := c.Subscribe(context.Background(), loadChannels...)
		if err != nil {
			t.Fatal(err)
		}
		l.sinks = append(l.sinks, newSink(t, s))
	}
	for p := range 2 {
		c := e.client(cfg)
		l.pubs = append(l.pubs, c)
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			tick := time.NewTicker(interval)
			defer tick.Stop()
			for i := 0; ; i++ {
				select {
				case <-l.stop:
					return
				case <-tick.C:
				}
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				t0 := time.Now()
				err := c.Publish(ctx, loadChannels[i%len(loadChannels)], []byte(fmt.Sprintf("%d:%d", p, i)))
				took := time.Since(t0)
				cancel()
				l.mu.Lock()
				l.slowest = max(l.slowest, took)
				if err == nil {
					l.ok[[2]int{p, i}] = true
				} else {
					l.failed++
					t.Logf("publisher %d: message %d: %v", p, i, err)
				}
				l.mu.Unlock()
			}
		}()
	}
	return l
}

type tally struct {
	slowest              time.Duration
	published, failed    int
	received, lost, dups []int
	outOfOrder           []int
}

// finish stops the publishers, waits until the subscribers stop receiving,
// and counts.
func (l *load) finish() tally {
	close(l.stop)
	l.wg.Wait()
	l.mu.Lock()
	defer l.mu.Unlock()
	want := int64(len(l.ok))
	quiet := time.Now()
	lastSum := int64(-1)
	for time.Since(quiet) < 2*time.Second {
		var sum int64
		all := true
		for _, k := range l.sinks {
			n := k.total.Load()
			sum += n
			all = all && n >= want
		}
		if all {
			break
		}
		if sum != lastSum {
			lastSum, quiet = sum, time.Now()
		}
		time.Sleep(50 * time.Millisecond)
	}
	r := tally{published: len(l.ok), failed: l.failed, slowest: l.slowest}
	for _, k := range l.sinks {
		k.mu.Lock()
		lost := 0
		for key := range l.ok {
			if !k.got[key] {
				lost++
			}
		}
		r.received = append(r.received, len(k.got))
		r.lost = append(r.lost, lost)
		r.dups = append(r.dups, k.dups)
		r.outOfOrder = append(r.outOfOrder, k.outOrder)
		k.mu.Unlock()
	}
	return r
}

func sum(xs []int) (s int) {
	for _, x := range xs {
		s += x
	}
	return s
}

// TestScenarios runs the membership and fault scenarios under load and
// checks the accounting: what was published (Publish returned nil), what
// each of three subscribers received, lost, got twice, or got out of order
// per publisher and channel.
func TestScenarios(t *testing.T) {
	if testing.Short() {
		t.Skip("scenarios take ~15s")
	}
	tests := []struct {
		name     string
		replicas int
		maxLost  int // per subscriber: what may be in flight on a crashed node
		event    func(t *testing.T, e *env, agents []*broker.Agent)
	}{
		{"node joins", 1, 0, func(t *testing.T, e *env, _ []*broker.Agent) {
			waitReady(t, e.agent("n4"))
		}},
		{"node drains", 1, 0, func(t *testing.T, e *env, agents []*broker.Agent) {
			if err := e.reg.RequestDrain(context.Background(), agents[0].ID(), "test"); err != nil {
				t.Fatal(err)
			}
			select {
			case <-agents[0].Done():
			case <-time.After(20 * time.Second):
				t.Fatal("drained agent did not stop")
			}
		}},
		{"redis kill -9", 1, 20, killRedis},
		{"redis kill -9, replicas 2", 2, 0, killRedis},
		{"redis SIGSTOP 2s", 1, 20, stopRedis},
		{"redis SIGSTOP 2s, replicas 2", 2, 0, stopRedis},
		{"etcd stopped and restarted", 1, 0, func(t *testing.T, e *env, _ []*broker.Agent) {
			e.etcd.Stop()
			time.Sleep(3 * time.Second) // longer than the 2s leases
			if err := e.etcd.Restart(); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			var agents []*broker.Agent
			for i := 1; i <= 3; i++ {
				agents = append(agents, e.agent(fmt.Sprintf("n%d", i)))
			}
			for _, a := range agents {
				waitReady(t, a)
			}
			l := startLoad(t, e, fanout.Config{Replicas: tc.replicas}, 4*time.Millisecond)
			time.Sleep(time.Second)
			tc.event(t, e, agents)
			time.Sleep(1500 * time.Millisecond)
			r := l.finish()
			t.Logf("%s: published %d (failed %d, slowest publish %s); per subscriber received %v, lost %v, duplicates %v, out of order %v",
				tc.name, r.published, r.failed, r.slowest.Round(time.Millisecond), r.received, r.lost, r.dups, r.outOfOrder)
			if r.published < 50 { // traffic flowed; the rate itself is the machine's

				t.Errorf("only %d messages published", r.published)
			}
			if r.failed > 0 {
				t.Errorf("%d publishes failed", r.failed)
			}
			for i := range l.sinks {
				if r.lost[i] > tc.maxLost {
					t.Errorf("subscriber %d lost %d messages, want at most %d", i, r.lost[i], tc.maxLost)
				}
			}
			if sum(r.dups) > 0 {
				t.Errorf("duplicates delivered: %v", r.dups)
			}
			if tc.maxLost == 0 && sum(r.outOfOrder) > 0 {
				t.Errorf("messages out of order: %v", r.outOfOrder)
			}
		})
	}
}

func killRedis(t *testing.T, _ *env, agents []*broker.Agent) {
	if err := syscall.Kill(agents[0].PID(), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
}

func stopRedis(t *testing.T, _ *env, agents []*broker.Agent) {
	pid := agents[0].PID()
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	defer syscall.Kill(pid, syscall.SIGCONT)
	time.Sleep(2 * time.Second)
}
