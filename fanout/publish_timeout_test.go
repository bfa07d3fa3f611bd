package fanout_test

import (
	"context"
	"fmt"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pubmesh/pubmesh/discovery"
	"github.com/pubmesh/pubmesh/fanout"
)

// TestPublishTimeoutBoundsAttempt: PublishTimeout bounds an attempt on a
// hung node from its enqueue, whatever holds it up (the queue behind a
// stalled pipeline, new connections' handshakes): a publish whose home
// node is SIGSTOPped gives up on it once and succeeds on another node.
// Before, such publishes took 2 to 4 PublishTimeouts (chaos scenario 4).
//
// It asserts behaviour, not the machine's speed: every publish succeeds,
// through a node that answers (a subscriber gets each one, none through
// the hung node), and the hung node costs each publish at most one
// abandoned attempt (pubmesh_fanout_publish_retries_total). The only time
// bound catches a hang, far above any machine's speed.
func TestPublishTimeoutBoundsAttempt(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	hung, _ := e.node("n1", discovery.StateReady)
	e.node("n2", discovery.StateReady)
	e.node("n3", discovery.StateReady)
	// A healthy node answers far within it even on a busy machine, so only
	// the hung node makes a publish give up an attempt.
	const timeout = time.Second
	// SuspectFor short: a warm-up publish slower than PublishTimeout on a
	// busy machine marks its node suspect (tried last), and the SIGSTOPped
	// node must not be skipped for that reason when the test starts.
	const suspectFor = 500 * time.Millisecond
	reg := prometheus.NewRegistry()
	c := e.client(fanout.Config{PublishTimeout: timeout, DialTimeout: 10 * timeout, SuspectFor: suspectFor, Registerer: reg, Logger: quietLog()})
	subc := e.client(fanout.Config{Logger: quietLog()})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	const n = 32
	chans := make([]string, n)
	for i := range chans {
		chans[i] = fmt.Sprintf("ch%d", i)
	}
	sub, err := subc.Subscribe(ctx, chans...)
	if err != nil {
		t.Fatal(err)
	}
	waitNodes(t, c, 3)
	// One publish at a time first: each node's pool holds one connection,
	// so concurrent publishes to the hung node need new ones (the kernel
	// accepts them, Redis never answers their handshake).
	for _, ch := range chans {
		if err := c.Publish(ctx, ch, []byte("warm")); err != nil {
			t.Fatal(err)
		}
	}
	recv(t, sub, n, 30*time.Second)
	time.Sleep(2 * suspectFor)
	if err := hung.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	defer hung.Signal(syscall.SIGCONT)
	retriesBefore := metricValue(t, reg, "pubmesh_fanout_publish_retries_total")
	var mu sync.Mutex
	var slowest time.Duration
	var wg sync.WaitGroup
	for _, ch := range chans { // some of these channels are homed on n1
		wg.Add(1)
		go func() {
			defer wg.Done()
			t0 := time.Now()
			if err := c.Publish(ctx, ch, []byte("x")); err != nil {
				t.Errorf("publish: %v", err)
			}
			mu.Lock()
			slowest = max(slowest, time.Since(t0))
			mu.Unlock()
		}()
	}
	wg.Wait()
	retries := metricValue(t, reg, "pubmesh_fanout_publish_retries_total") - retriesBefore
	t.Logf("slowest publish %s, %v retries (PublishTimeout %s)", slowest, retries, timeout)
	if slowest < timeout {
		t.Fatalf("slowest publish %s: none went to the hung node", slowest)
	}
	if retries < 1 || retries > n {
		t.Errorf("%v retries for %d publishes with one hung node: want each publish to give up on it at most once", retries, n)
	}
	if slowest > 30*time.Second {
		t.Errorf("a publish hung for %s", slowest)
	}
	for _, m := range recv(t, sub, n, 30*time.Second) {
		if m.Node == "n1" {
			t.Errorf("message on %s came through the hung node", m.Channel)
		}
	}
}
