package fanout_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pubmesh/pubmesh/discovery"
	"github.com/pubmesh/pubmesh/fanout"
	"github.com/pubmesh/pubmesh/internal/tcpproxy"
	"github.com/pubmesh/pubmesh/internal/testredis"
)

// stream publishes numbered messages on channel until stop, one at a time,
// and remembers which ones a node accepted.
type stream struct {
	mu       sync.Mutex
	accepted []int
	next     atomic.Int64 // the number the next publish will carry
	stop     chan struct{}
	done     chan struct{}
}

func startStream(c *fanout.Client, channel string, every time.Duration) *stream {
	s := &stream{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		for i := 0; ; i++ {
			select {
			case <-s.stop:
				return
			case <-time.After(every):
			}
			s.next.Store(int64(i))
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			err := c.Publish(ctx, channel, []byte(fmt.Sprint(i)))
			cancel()
			if err == nil {
				s.mu.Lock()
				s.accepted = append(s.accepted, i)
				s.mu.Unlock()
			}
		}
	}()
	return s
}

func (s *stream) finish() []int {
	close(s.stop)
	<-s.done
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.accepted
}

// missing reads sub until every accepted number from `from` on arrived, or
// 20 s pass, and returns those that did not.
func missing(t *testing.T, sub *fanout.Subscription, accepted []int, from int) []int {
	t.Helper()
	want := map[int]bool{}
	for _, i := range accepted {
		if i >= from {
			want[i] = true
		}
	}
	deadline := time.After(20 * time.Second)
	for len(want) > 0 {
		select {
		case m, ok := <-sub.Messages():
			if !ok {
				t.Fatal("subscription closed")
			}
			var i int
			fmt.Sscan(string(m.Payload), &i)
			delete(want, i)
		case <-deadline:
			var out []int
			for i := range want {
				out = append(out, i)
			}
			return out
		}
	}
	return nil
}

// TestUnsubscribeWithSilentNode: closing subscriptions while one node is
// silent (cut off from this client: its connections broke and the new ones
// get no answer, as with a partition or a hung process) neither blocks the
// caller on that node nor breaks the subscription connections of the
// healthy nodes: another channel of the same client loses none of the
// messages the healthy nodes accepted, and Client.Close with 9
// subscriptions returns without a network round trip per subscription.
// Before, every Close shared one PublishTimeout across the nodes, the
// silent node used it up, the next node's UNSUBSCRIBE went out with an
// expired context and go-redis dropped that node's connection (and the
// messages in flight on it); Client.Close took about a second per
// subscription.
func TestUnsubscribeWithSilentNode(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	silent := tcpproxy.New(t, testredis.New(t).Addr)
	e.register("n1", silent.Addr(), discovery.StateReady)
	e.node("n2", discovery.StateReady)
	e.node("n3", discovery.StateReady)
	cfg := fanout.Config{PublishTimeout: 500 * time.Millisecond, SuspectFor: time.Minute, Logger: quietLog()}
	pub := e.client(cfg)
	subc := e.client(cfg)
	ctx := context.Background()
	keep, err := subc.Subscribe(ctx, "keep")
	if err != nil {
		t.Fatal(err)
	}
	var subs []*fanout.Subscription
	for i := range 8 {
		s, err := subc.Subscribe(ctx, fmt.Sprintf("other%d", i))
		if err != nil {
			t.Fatal(err)
		}
		subs = append(subs, s)
	}
	silent.Cut()
	st := startStream(pub, "keep", 2*time.Millisecond)
	time.Sleep(300 * time.Millisecond)
	t0 := time.Now()
	for _, s := range subs {
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	closing := time.Since(t0) - time.Duration(len(subs))*50*time.Millisecond
	time.Sleep(300 * time.Millisecond)
	accepted := st.finish()
	if len(accepted) == 0 {
		t.Fatal("no publish was accepted")
	}
	if lost := missing(t, keep, accepted, 0); len(lost) > 0 {
		t.Errorf("channel keep lost %d of %d messages accepted by healthy nodes while other subscriptions closed, e.g. %v", len(lost), len(accepted), lost[:min(len(lost), 10)])
	}
	t.Logf("%d Subscription.Close calls took %s with a silent node", len(subs), closing)
	for i := range 8 {
		if _, err := subc.Subscribe(ctx, fmt.Sprintf("again%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	t0 = time.Now()
	if err := subc.Close(); err != nil {
		t.Fatal(err)
	}
	// The bound is far above what Close needs (no network round trip) and
	// far below the ~1 s per subscription it took while it unsubscribed
	// each one on every node.
	if d := time.Since(t0); d > 5*time.Second {
		t.Errorf("Client.Close with 9 subscriptions and a silent node took %s", d)
	}
}

// TestSubscribeWhileLastSubscriptionCloses: a Subscribe to X that runs
// while the last subscription of X closes gets every message published
// after it returned: the UNSUBSCRIBE of the closing one never removes the
// new SUBSCRIBE on any node.
func TestSubscribeWhileLastSubscriptionCloses(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.node("n1", discovery.StateReady)
	e.node("n2", discovery.StateReady)
	pub := e.client(fanout.Config{Logger: quietLog()})
	subc := e.client(fanout.Config{Logger: quietLog()})
	ctx := context.Background()
	old, err := subc.Subscribe(ctx, "x")
	if err != nil {
		t.Fatal(err)
	}
	st := startStream(pub, "x", time.Millisecond)
	var fresh []*fanout.Subscription
	var froms []int
	for range 20 {
		var wg sync.WaitGroup
		wg.Add(1)
		go func() { defer wg.Done(); old.Close() }()
		s, err := subc.Subscribe(ctx, "x")
		if err != nil {
			t.Fatal(err)
		}
		// Messages numbered from here on were published after Subscribe
		// returned (the one in flight may not have been).
		froms = append(froms, int(st.next.Load())+1)
		wg.Wait()
		fresh = append(fresh, s)
		old = s
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond)
	accepted := st.finish()
	// Each subscription but the last was closed; it must have had every
	// message from its start until its close, and the last one everything
	// from its start on. Only the last is still open: check it, and that
	// closed ones were not cut short before... the last is what a late
	// UNSUBSCRIBE would have broken most often, so check each while open
	// is not possible; check the last one fully.
	last := fresh[len(fresh)-1]
	if lost := missing(t, last, accepted, froms[len(froms)-1]); len(lost) > 0 {
		t.Errorf("the newest subscription lost %d messages published after Subscribe returned, e.g. %v", len(lost), lost[:min(len(lost), 10)])
	}
}
