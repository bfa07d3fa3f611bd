package fanout_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pubmesh/pubmesh/discovery"
	"github.com/pubmesh/pubmesh/fanout"
)

// A reconnect storm: many History calls from one position at once share
// a few reads of the nodes, and each gets the whole answer.
func TestHistoryCallsShareReads(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.node("n1", discovery.StateReady)
	e.node("n2", discovery.StateReady)
	applyConfig(t, e, `namespaces: [{match: "h.*", history_size: 1000}]`)
	reg := prometheus.NewRegistry()
	c := e.client(fanout.Config{Registerer: reg})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	publishN(t, c, "h.s", 1, 50)
	first, err := c.History(ctx, "h.s", fanout.HistoryOptions{Limit: 10})
	if err != nil {
		t.Fatal(err)
	}
	pos := first.Messages[9].Position() // after message 10
	const calls = 300
	var wg sync.WaitGroup
	errs := make(chan error, calls)
	for range calls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			h, err := c.History(ctx, "h.s", fanout.HistoryOptions{Since: pos})
			switch {
			case err != nil:
				errs <- err
			case !h.Recovered || len(h.Messages) != 40 || string(h.Messages[0].Payload) != "11" || string(h.Messages[39].Payload) != "50":
				errs <- fmt.Errorf("recovered %v, %d messages", h.Recovered, len(h.Messages))
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	reads := metricValue(t, reg, "pubmesh_fanout_history_reads_total")
	shared := metricValue(t, reg, "pubmesh_fanout_history_shared_reads_total")
	if reads >= calls/2 || shared == 0 {
		t.Errorf("%d calls made %v reads (%v shared): the calls did not share reads", calls, reads, shared)
	}
	t.Logf("%d History calls, %v reads", calls+1, reads)
}

// A shared read never starts before a call that it serves: a message
// published before History is called is always in its answer, however
// many identical calls run at once.
func TestHistorySharedReadsMissNothing(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.node("n1", discovery.StateReady)
	applyConfig(t, e, `namespaces: [{match: "h.*", history_size: 10000}]`)
	c := e.client(fanout.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	publishN(t, c, "h.j", 0, 0)
	h0, err := c.History(ctx, "h.j", fanout.HistoryOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pos := h0.Position
	var wg sync.WaitGroup
	for w := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 20 {
				want := fmt.Sprintf("w%d-%d", w, i)
				if err := c.Publish(ctx, "h.j", []byte(want)); err != nil {
					t.Error(err)
					return
				}
				h, err := c.History(ctx, "h.j", fanout.HistoryOptions{Since: pos})
				if err != nil {
					t.Error(err)
					return
				}
				found := false
				for _, m := range h.Messages {
					found = found || string(m.Payload) == want
				}
				if !found {
					t.Errorf("%s, published before History was called, is not in its answer (%d messages)", want, len(h.Messages))
					return
				}
			}
		}()
	}
	wg.Wait()
}
