package fanout_test

import (
	"context"
	"fmt"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pubmesh/pubmesh/discovery"
	"github.com/pubmesh/pubmesh/fanout"
)

// TestPublishTimeoutBoundsAttempt: PublishTimeout bounds an attempt on a
// hung node from its enqueue, whatever holds it up (the queue behind a
// stalled pipeline, new connections' handshakes): a publish whose home
// node is SIGSTOPped gives up on it after PublishTimeout and succeeds on
// the next node. Before, such publishes took 2 to 4 PublishTimeouts (chaos
// scenario 4, and 0.6-1.1 s here with 300 ms); now about one. The bound
// leaves room for a loaded machine, so it catches hangs rather than that.
func TestPublishTimeoutBoundsAttempt(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	hung, _ := e.node("n1", discovery.StateReady)
	e.node("n2", discovery.StateReady)
	e.node("n3", discovery.StateReady)
	const timeout = 300 * time.Millisecond
	// SuspectFor short: a warm-up publish slower than PublishTimeout on a
	// busy machine marks its node suspect (tried last), and the SIGSTOPped
	// node must not be skipped for that reason when the test starts.
	const suspectFor = 200 * time.Millisecond
	c := e.client(fanout.Config{PublishTimeout: timeout, DialTimeout: 10 * timeout, SuspectFor: suspectFor, Logger: quietLog()})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for len(c.Nodes().Ready()) < 3 {
		if ctx.Err() != nil {
			t.Fatal("the client does not see 3 ready nodes")
		}
		time.Sleep(10 * time.Millisecond)
	}
	// One publish at a time first: each node's pool holds one connection,
	// so concurrent publishes to the hung node need new ones (the kernel
	// accepts them, Redis never answers their handshake).
	for i := range 32 {
		if err := c.Publish(ctx, fmt.Sprintf("ch%d", i), []byte("warm")); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(2 * suspectFor)
	if err := hung.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	defer hung.Signal(syscall.SIGCONT)
	var mu sync.Mutex
	var slowest time.Duration
	var wg sync.WaitGroup
	for i := range 32 { // some of these channels are homed on n1
		wg.Add(1)
		go func() {
			defer wg.Done()
			t0 := time.Now()
			if err := c.Publish(ctx, fmt.Sprintf("ch%d", i), []byte("x")); err != nil {
				t.Errorf("publish: %v", err)
			}
			mu.Lock()
			slowest = max(slowest, time.Since(t0))
			mu.Unlock()
		}()
	}
	wg.Wait()
	if slowest < timeout {
		t.Fatalf("slowest publish %s: none went to the hung node", slowest)
	}
	t.Logf("slowest publish %s (PublishTimeout %s, DialTimeout %s)", slowest, timeout, 10*timeout)
	if slowest > 4*timeout+500*time.Millisecond {
		t.Errorf("slowest publish took %s with PublishTimeout %s", slowest, timeout)
	}
}
