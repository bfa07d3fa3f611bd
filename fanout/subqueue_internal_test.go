package fanout

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"sync"
	"testing"

	dto "github.com/prometheus/client_model/go"

	"github.com/pubmesh/pubmesh/discovery"
)

// TestSubscriptionQueueIsBounded: a node that accepts connections and never
// answers keeps its subscription loop waiting; the Subscribes and Closes
// meanwhile must not grow its queue without bound. Subscribes past 1024
// are answered at once (errSubQueueFull), counted, and the node is owed the
// whole set; unsubscribes are merged into one set of names.
func TestSubscriptionQueueIsBounded(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	var (
		mu   sync.Mutex
		held []net.Conn
	)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			held = append(held, c) // silence: accepted, never answered
			mu.Unlock()
		}
	}()
	defer func() {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range held {
			c.Close()
		}
	}()

	cfg := Config{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}.withDefaults()
	c := &Client{cfg: cfg, log: cfg.Logger, m: newMetrics(nil), subs: newRegistry(),
		nodes: map[string]*nodeConn{}, readyC: make(chan struct{}), kick: make(chan struct{}, 1)}
	c.ready.Store(&readySet{})
	c.ctx, c.cancel = context.WithCancel(context.Background())
	c.apply(discovery.Snapshot{Nodes: []discovery.Node{{ID: "n1", Addr: l.Addr().String(), State: discovery.StateReady}}})
	defer func() {
		c.cancel()
		c.connMu.Lock()
		c.retire(c.nodes["n1"])
		c.connMu.Unlock()
		c.wg.Wait()
	}()
	c.connMu.Lock()
	nc := c.nodes["n1"]
	c.connMu.Unlock()

	full := 0
	for range 3000 {
		select {
		case err := <-nc.subscribeAsync([]string{"ch"}, nil):
			if !errors.Is(err, errSubQueueFull) {
				t.Fatalf("a subscribe was answered while the node is silent: %v", err)
			}
			full++
		default:
		}
		nc.unsubscribeAsync([]string{"a", "b", "c"}, false)
	}
	nc.subQMu.Lock()
	queued, unsubs := len(nc.subQ), len(nc.unsubC)
	nc.subQMu.Unlock()
	if queued > maxQueuedSubs {
		t.Errorf("%d subscribes queued, want at most %d", queued, maxQueuedSubs)
	}
	if unsubs != 3 {
		t.Errorf("%d names in the merged unsubscribe set, want 3", unsubs)
	}
	var m dto.Metric
	c.m.subQueueFull.Write(&m)
	// The loop may take a batch before it blocks on the silent node, so
	// the count is not exact; most of the 3000 must be refused.
	if full < 3000-2*maxQueuedSubs || float64(full) != m.GetCounter().GetValue() {
		t.Errorf("%d subscribes refused as queue full (metric %v), want at least %d, all counted", full, m.GetCounter().GetValue(), 3000-2*maxQueuedSubs)
	}
	if !nc.resubAll.Load() {
		t.Error("after a full queue the node is not owed the whole set")
	}
}
