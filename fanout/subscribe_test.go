package fanout_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/pubmesh/pubmesh/discovery"
	"github.com/pubmesh/pubmesh/fanout"
)

func TestPatternsAndChannelsTogether(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.node("n1", discovery.StateReady)
	e.node("n2", discovery.StateReady)
	c := e.client(fanout.Config{})
	ctx := context.Background()
	pat, err := c.PSubscribe(ctx, "news.*")
	if err != nil {
		t.Fatal(err)
	}
	exact, err := c.Subscribe(ctx, "news.eu")
	if err != nil {
		t.Fatal(err)
	}
	for _, ch := range []string{"news.eu", "news.us", "sport.eu"} {
		if err := c.Publish(ctx, ch, []byte(ch)); err != nil {
			t.Fatal(err)
		}
	}
	got := recv(t, pat, 2, 5*time.Second)
	if got[0].Channel != "news.eu" || got[1].Channel != "news.us" || got[0].Pattern != "news.*" {
		t.Fatalf("pattern subscription got %+v %+v", got[0], got[1])
	}
	if m := recv(t, exact, 1, 5*time.Second)[0]; m.Channel != "news.eu" || m.Pattern != "" {
		t.Fatalf("channel subscription got %+v", m)
	}
	select {
	case m := <-exact.Messages():
		t.Fatalf("unexpected message %+v", m)
	case m := <-pat.Messages():
		t.Fatalf("unexpected message %+v", m)
	case <-time.After(200 * time.Millisecond):
	}
	// Closing one of two subscriptions to a channel keeps the other fed.
	other, _ := c.Subscribe(ctx, "news.eu")
	exact.Close()
	if _, ok := <-exact.Messages(); ok {
		t.Fatal("Messages not closed by Close")
	}
	if err := exact.Close(); err != fanout.ErrClosed {
		t.Fatalf("second Close = %v, want ErrClosed", err)
	}
	c.Publish(ctx, "news.eu", []byte("again"))
	if m := recv(t, other, 1, 5*time.Second)[0]; string(m.Payload) != "again" {
		t.Fatalf("got %q", m.Payload)
	}
}

// A message published with plain redis-cli (no envelope) is delivered as
// is, so existing publishers can feed pubmesh subscribers.
func TestRawRedisPublishIsDelivered(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	rs, _ := e.node("n1", discovery.StateReady)
	c := e.client(fanout.Config{})
	ctx := context.Background()
	sub, err := c.Subscribe(ctx, "legacy")
	if err != nil {
		t.Fatal(err)
	}
	rdb := redis.NewClient(&redis.Options{Addr: rs.Addr})
	defer rdb.Close()
	if err := rdb.Publish(ctx, "legacy", "plain text").Err(); err != nil {
		t.Fatal(err)
	}
	m := recv(t, sub, 1, 5*time.Second)[0]
	if string(m.Payload) != "plain text" || m.ID() != "" || !m.PublishedAt.IsZero() {
		t.Fatalf("got %+v", m)
	}
}

func TestOverflowPolicies(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.node("n1", discovery.StateReady)
	ctx := context.Background()
	t.Run("drop oldest", func(t *testing.T) {
		c := e.client(fanout.Config{SubscriptionBuffer: 10})
		sub, _ := c.Subscribe(ctx, "flood")
		for i := range 100 {
			if err := c.Publish(ctx, "flood", []byte(fmt.Sprint(i))); err != nil {
				t.Fatal(err)
			}
		}
		deadline := time.Now().Add(5 * time.Second)
		for sub.Dropped() < 90 && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if d := sub.Dropped(); d != 90 {
			t.Fatalf("dropped %d, want 90", d)
		}
		got := recv(t, sub, 10, time.Second)
		if string(got[0].Payload) != "90" || string(got[9].Payload) != "99" {
			t.Fatalf("kept %q..%q, want the newest 90..99", got[0].Payload, got[9].Payload)
		}
	})
	t.Run("block", func(t *testing.T) {
		c := e.client(fanout.Config{SubscriptionBuffer: 10, Overflow: fanout.Block})
		sub, _ := c.Subscribe(ctx, "flood2")
		for i := range 100 {
			if err := c.Publish(ctx, "flood2", []byte(fmt.Sprint(i))); err != nil {
				t.Fatal(err)
			}
		}
		got := recv(t, sub, 100, 10*time.Second)
		for i, m := range got {
			if string(m.Payload) != fmt.Sprint(i) {
				t.Fatalf("message %d is %q", i, m.Payload)
			}
		}
		if sub.Dropped() != 0 {
			t.Fatalf("Block dropped %d", sub.Dropped())
		}
		// A blocked subscription must not keep Close from returning.
		for i := range 50 {
			c.Publish(ctx, "flood2", []byte(fmt.Sprint(i)))
		}
		done := make(chan struct{})
		go func() { sub.Close(); c.Close(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("Close blocked behind a full subscription")
		}
	})
}

func TestSubscribeBeforeNodesAppear(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	c := e.client(fanout.Config{})
	ctx := context.Background()
	sub, err := c.Subscribe(ctx, "early")
	if err != nil {
		t.Fatal(err)
	}
	e.node("late", discovery.StateReady)
	// The node registered as ready directly, so give the client a moment to
	// subscribe there (an agent's join handshake would wait for it).
	deadline := time.Now().Add(5 * time.Second)
	for {
		if err := c.Publish(ctx, "early", []byte("x")); err != nil {
			t.Fatal(err)
		}
		select {
		case m := <-sub.Messages():
			if string(m.Payload) != "x" {
				t.Fatalf("got %q", m.Payload)
			}
			return
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatal("subscription made before the node appeared never received")
		}
	}
}

// A node that is registered but does not answer (down, or partitioned away)
// does not hold Subscribe: it returns after a bounded wait and the reachable
// node delivers.
func TestSubscribeDoesNotWaitForADeadNode(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.node("alive", discovery.StateReady)
	deadAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	g, err := e.reg.Register(context.Background(), discovery.Node{ID: "dead", Addr: deadAddr, State: discovery.StateJoining, StartedAt: time.Now(), Version: "test"}, discovery.RegisterOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close(context.Background())
	c := e.client(fanout.Config{DialTimeout: 300 * time.Millisecond, PublishTimeout: 300 * time.Millisecond})
	start := time.Now()
	sub, err := c.Subscribe(context.Background(), "x")
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("Subscribe took %s with one node not answering", d)
	}
	if err := c.Publish(context.Background(), "x", []byte("hi")); err != nil {
		t.Fatal(err)
	}
	if m := recv(t, sub, 1, 5*time.Second)[0]; string(m.Payload) != "hi" {
		t.Fatalf("got %q", m.Payload)
	}
}

// TestPayloadsAreNotShared: a delivered payload belongs to its message.
// The subscription reader reads every message into one reused buffer
// (respreader.go) and the client copies the payload out once; messages
// held while later ones are read must keep their bytes, and changing one
// changes no other.
func TestPayloadsAreNotShared(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.node("n1", discovery.StateReady)
	c := e.client(fanout.Config{SubscriptionBuffer: 1000})
	ctx := context.Background()
	sub, err := c.Subscribe(ctx, "owned")
	if err != nil {
		t.Fatal(err)
	}
	payload := func(i int) []byte {
		b := make([]byte, 3+(i*37)%3000)
		for j := range b {
			b[j] = byte('a' + (i+j)%26)
		}
		return b
	}
	const n = 500
	for i := range n {
		if err := c.Publish(ctx, "owned", payload(i)); err != nil {
			t.Fatal(err)
		}
	}
	got := recv(t, sub, n, 10*time.Second)
	for i, m := range got {
		m.Payload[0] = '!'
		m.Payload[len(m.Payload)-1] = '!'
		if i > 0 {
			if want := payload(i - 1); string(got[i-1].Payload[1:len(want)-1]) != string(want[1:len(want)-1]) {
				t.Fatalf("message %d changed when %d was read or changed", i-1, i)
			}
		}
	}
	for i, m := range got {
		want := payload(i)
		want[0], want[len(want)-1] = '!', '!'
		if string(m.Payload) != string(want) {
			t.Fatalf("message %d: %d bytes %.20q..., want %d bytes %.20q...", i, len(m.Payload), m.Payload, len(want), want)
		}
	}
}
