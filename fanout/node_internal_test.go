package fanout

import (
	"context"
	"io"
	"log/slog"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/pubmesh/pubmesh/discovery"
)

// TestNodeConnGoroutinesEndWithClose: once a node conn is closed, none of
// its goroutines runs any more, even when it is closed right after the
// snapshot that made it (its start goroutine used to be untracked, and
// could start publishers after close had waited for them).
func TestNodeConnGoroutinesEndWithClose(t *testing.T) {
	cfg := Config{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}.withDefaults()
	for i := range 200 {
		c := &Client{cfg: cfg, log: cfg.Logger, m: newMetrics(nil), subs: newRegistry(),
			nodes: map[string]*nodeConn{}, readyC: make(chan struct{}), kick: make(chan struct{}, 1)}
		c.ready.Store(&readySet{})
		c.ctx, c.cancel = context.WithCancel(context.Background())
		// A port nothing listens on: the conn keeps trying to subscribe.
		c.apply(discovery.Snapshot{Nodes: []discovery.Node{{ID: "n1", Addr: "127.0.0.1:1", State: discovery.StateReady}}})
		c.cancel()
		c.connMu.Lock()
		c.retire(c.nodes["n1"])
		c.connMu.Unlock()
		c.wg.Wait()
		// A goroutine that called wg.Done may still be returning; one
		// started after close would be seen for much longer, and the race
		// detector reports its wg.Add racing with close's wg.Wait.
		deadline := time.Now().Add(2 * time.Second)
		for {
			buf := make([]byte, 1<<20)
			stacks := string(buf[:runtime.Stack(buf, true)])
			if !strings.Contains(stacks, "fanout.(*nodeConn)") {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("iteration %d: a node conn goroutine runs after close:\n%s", i, stacks)
			}
			time.Sleep(time.Millisecond)
		}
	}
}
