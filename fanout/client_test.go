package fanout_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/pubmesh/pubmesh/discovery"
	"github.com/pubmesh/pubmesh/fanout"
)

func TestPublishSubscribeAcrossNodes(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	for i := range 3 {
		e.node(fmt.Sprintf("n%d", i), discovery.StateReady)
	}
	pub := e.client(fanout.Config{})
	subc := e.client(fanout.Config{})
	ctx := context.Background()
	chans := []string{"a", "b", "c", "d", "e", "f", "g", "h"}
	sub, err := subc.Subscribe(ctx, chans...)
	if err != nil {
		t.Fatal(err)
	}
	const per = 50
	for i := range per {
		for _, ch := range chans {
			if err := pub.Publish(ctx, ch, []byte(fmt.Sprintf("%s-%d", ch, i))); err != nil {
				t.Fatal(err)
			}
		}
	}
	got := recv(t, sub, per*len(chans), 10*time.Second)
	next := map[string]int{}
	nodes := map[string]bool{}
	for _, m := range got {
		want := fmt.Sprintf("%s-%d", m.Channel, next[m.Channel])
		if string(m.Payload) != want {
			t.Fatalf("channel %s: got %q, want %q", m.Channel, m.Payload, want)
		}
		next[m.Channel]++
		nodes[m.Node] = true
		if m.ID() == "" || m.PublishedAt.IsZero() {
			t.Fatalf("message without id or time: %+v", m)
		}
	}
	if len(nodes) < 2 {
		t.Errorf("8 channels all went through %d node(s); rendezvous should spread them", len(nodes))
	}
}

func TestPublishErrors(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	c := e.client(fanout.Config{WaitReady: 200 * time.Millisecond})
	ctx := context.Background()
	tests := []struct {
		name    string
		channel string
	}{
		{"empty", ""},
		{"space", "a b"},
		{"control", "a\x01"},
		{"too long", string(make([]byte, 300))},
		{"bad utf8", "a\xff"},
	}
	for _, tc := range tests {
		if err := c.Publish(ctx, tc.channel, nil); err == nil {
			t.Errorf("%s: publish succeeded", tc.name)
		}
		if _, err := c.Subscribe(ctx, tc.channel); err == nil {
			t.Errorf("%s: subscribe succeeded", tc.name)
		}
	}
	if err := c.Publish(ctx, "ok", nil); err == nil {
		t.Error("publish with no nodes succeeded")
	}
	c.Close()
	if err := c.Publish(ctx, "ok", nil); err != fanout.ErrClosed {
		t.Errorf("publish after close: %v, want ErrClosed", err)
	}
	if err := c.Close(); err != fanout.ErrClosed {
		t.Errorf("second close: %v, want ErrClosed", err)
	}
}
