package fanout_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pubmesh/pubmesh/discovery"
	"github.com/pubmesh/pubmesh/fanout"
)

// checkOrder asserts that got holds every "<channel>-<i>" for i in
// [0, per) exactly once per channel, in order.
func checkOrder(t *testing.T, got []*fanout.Message, chans []string, per int) {
	t.Helper()
	next := map[string]int{}
	for _, m := range got {
		want := fmt.Sprintf("%s-%d", m.Channel, next[m.Channel])
		if string(m.Payload) != want {
			t.Fatalf("channel %s: got %q, want %q", m.Channel, m.Payload, want)
		}
		next[m.Channel]++
	}
	for _, ch := range chans {
		if next[ch] != per {
			t.Errorf("channel %s: %d of %d messages", ch, next[ch], per)
		}
	}
}

// One goroutine publishing without waiting: every message arrives once,
// in order per channel, and Flush reports no error.
func TestPublishAsyncDeliversInOrder(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	for i := range 3 {
		e.node(fmt.Sprintf("n%d", i), discovery.StateReady)
	}
	reg := prometheus.NewRegistry()
	pub := e.client(fanout.Config{Registerer: reg})
	subc := e.client(fanout.Config{SubscriptionBuffer: 1 << 16})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	chans := []string{"a", "b", "c", "d", "e", "f", "g", "h"}
	sub, err := subc.Subscribe(ctx, chans...)
	if err != nil {
		t.Fatal(err)
	}
	const per = 2000
	results := make([]*fanout.PublishResult, 0, per*len(chans))
	for i := range per {
		for _, ch := range chans {
			results = append(results, pub.PublishAsync(ctx, ch, []byte(fmt.Sprintf("%s-%d", ch, i))))
		}
	}
	if err := pub.Flush(ctx); err != nil {
		t.Fatalf("Flush: %v", err)
	}
	for i, r := range results {
		select {
		case <-r.Done():
		default:
			t.Fatalf("result %d not done after Flush", i)
		}
		if r.Err() != nil {
			t.Fatalf("result %d: %v", i, r.Err())
		}
	}
	checkOrder(t, recv(t, sub, per*len(chans), 30*time.Second), chans, per)
	if v := metricValue(t, reg, "pubmesh_fanout_publishes_total"); v != float64(per*len(chans)) {
		t.Errorf("pubmesh_fanout_publishes_total = %v, want %d", v, per*len(chans))
	}
	if v := metricValue(t, reg, "pubmesh_fanout_async_pending_bytes"); v != 0 {
		t.Errorf("pubmesh_fanout_async_pending_bytes = %v after Flush, want 0", v)
	}
}

// The channel's node is killed while one goroutine publishes without
// waiting: the publishes still queued or in flight there are retried on
// the other node, in order, so the subscriber gets every message whose
// result said ok exactly once and in order; each result reports.
func TestPublishAsyncRetriesInOrderWhenNodeDies(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	n0, _ := e.node("n0", discovery.StateReady)
	n1, _ := e.node("n1", discovery.StateReady)
	reg := prometheus.NewRegistry()
	pub := e.client(fanout.Config{Logger: quietLog(), Registerer: reg})
	subc := e.client(fanout.Config{SubscriptionBuffer: 1 << 16, Logger: quietLog()})
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	// 8 channels: some are homed on n0 (all on n1 has a chance of 1/256).
	chans := []string{"a", "b", "c", "d", "e", "f", "g", "h"}
	sub, err := subc.Subscribe(ctx, chans...)
	if err != nil {
		t.Fatal(err)
	}
	waitNodes(t, pub, 2)
	const per = 2000
	var results []*fanout.PublishResult
	var payloads []string
	for i := range per {
		if i == per/3 {
			n0.Kill() // some of the channels live there
		}
		for _, ch := range chans {
			p := fmt.Sprintf("%s-%d", ch, i)
			results = append(results, pub.PublishAsync(ctx, ch, []byte(p)))
			payloads = append(payloads, p)
		}
	}
	flushErr := pub.Flush(ctx)
	ok := map[string]bool{}
	failed := 0
	for i, r := range results {
		if r.Err() != nil {
			failed++
			continue
		}
		ok[payloads[i]] = true
	}
	if failed > 0 && flushErr == nil {
		t.Errorf("%d results failed but Flush returned nil", failed)
	}
	if failed == 0 && flushErr != nil {
		t.Errorf("Flush: %v, but every result was ok", flushErr)
	}
	// Every accepted message arrives once, and per channel in publish order.
	got := recv(t, sub, len(ok), 60*time.Second)
	last := map[string]int{}
	seen := map[string]bool{}
	for _, m := range got {
		p := string(m.Payload)
		if seen[p] {
			t.Fatalf("%s delivered twice", p)
		}
		seen[p] = true
		ch, num, _ := strings.Cut(p, "-")
		i, _ := strconv.Atoi(num)
		if prev, ok := last[ch]; ok && i <= prev {
			t.Fatalf("channel %s: %d after %d", ch, i, prev)
		}
		last[ch] = i
	}
	for p := range ok {
		if !seen[p] {
			t.Errorf("%s accepted but not delivered", p)
		}
	}
	if n1.PID() == 0 {
		t.Fatal("the surviving node is gone")
	}
	if v := metricValue(t, reg, "pubmesh_fanout_publish_retries_total"); v == 0 {
		t.Error("no publish was retried: the kill did not hit publishes in flight")
	}
	t.Logf("%d of %d publishes failed (in flight on the killed node with no time to retry)", failed, len(results))
}

// MaxPendingPublishBytes bounds what is outstanding: against a node that
// never answers, PublishAsync blocks once it is reached, until its
// context ends; a payload larger than it is refused; every publish that
// could not be sent reports an error, and Flush returns the first with
// the count.
func TestPublishAsyncPendingBound(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.register("hung", hungAddr(t), discovery.StateReady)
	reg := prometheus.NewRegistry()
	pub := e.client(fanout.Config{MaxPendingPublishBytes: 1000, PublishTimeout: 300 * time.Millisecond, DialTimeout: 300 * time.Millisecond,
		Registerer: reg, Logger: quietLog()})
	waitNodes(t, pub, 1)
	bg := context.Background()

	if err := pub.PublishAsync(bg, "big", make([]byte, 1001)).Err(); err == nil || !strings.Contains(err.Error(), "MaxPendingPublishBytes") {
		t.Fatalf("a payload over MaxPendingPublishBytes: err = %v", err)
	}
	var results []*fanout.PublishResult
	for range 10 { // 10 x 100 bytes: exactly the bound
		results = append(results, pub.PublishAsync(bg, "c", make([]byte, 100)))
	}
	ctx, cancel := context.WithTimeout(bg, 100*time.Millisecond)
	defer cancel()
	blocked := pub.PublishAsync(ctx, "c", make([]byte, 100))
	if err := blocked.Err(); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("publish over the bound: err = %v, want the context's deadline", err)
	}
	if v := metricValue(t, reg, "pubmesh_fanout_async_blocked_total"); v < 1 {
		t.Errorf("pubmesh_fanout_async_blocked_total = %v, want >= 1", v)
	}
	if v := metricValue(t, reg, "pubmesh_fanout_async_pending_bytes"); v != 1000 {
		t.Errorf("pubmesh_fanout_async_pending_bytes = %v, want 1000", v)
	}
	fctx, fcancel := context.WithTimeout(bg, 30*time.Second)
	defer fcancel()
	err := pub.Flush(fctx)
	if err == nil || !strings.Contains(err.Error(), "10 async publishes failed") {
		t.Fatalf("Flush = %v, want the first error and a count of 10", err)
	}
	for i, r := range results {
		if r.Err() == nil {
			t.Errorf("result %d: nil error from a node that never answers", i)
		}
	}
	if err := pub.Flush(fctx); err != nil {
		t.Errorf("second Flush = %v, want nil (errors are reported once)", err)
	}
	// With room again, a publish is taken (and fails like the others).
	if err := pub.PublishAsync(bg, "c", make([]byte, 100)).Err(); err == nil {
		t.Error("publish to a node that never answers succeeded")
	}
}

// Close ends every async publish: those still queued or in flight on a
// node that never answers finish with an error, none is left waiting.
func TestPublishAsyncCloseFinishesAll(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.register("hung", hungAddr(t), discovery.StateReady)
	pub := e.client(fanout.Config{PublishTimeout: 2 * time.Second, DialTimeout: 300 * time.Millisecond, Logger: quietLog()})
	waitNodes(t, pub, 1)
	var results []*fanout.PublishResult
	for i := range 200 {
		results = append(results, pub.PublishAsync(context.Background(), fmt.Sprintf("c%d", i%4), []byte("x")))
	}
	pub.Close()
	deadline := time.After(20 * time.Second)
	for i, r := range results {
		select {
		case <-r.Done():
			if r.Err() == nil {
				t.Fatalf("result %d: nil error from a node that never answered", i)
			}
		case <-deadline:
			t.Fatalf("result %d still waiting 20 s after Close", i)
		}
	}
}
