package broker

import (
	"fmt"
	"testing"

	"github.com/pubmesh/pubmesh/discovery"
)

// A node's own stream is named after its run on the target; an adopted one
// keeps its name (its original run); anything else is not history.
func TestHandoffKey(t *testing.T) {
	const run = "aaaa"
	for _, tc := range []struct {
		key, channel, dst string
		ok                bool
	}{
		{"pm:h:chat.a", "chat.a", "pm:ha:aaaa:chat.a", true},
		{"pm:h:a:b", "a:b", "pm:ha:aaaa:a:b", true},
		{"pm:ha:bbbb:chat.a", "chat.a", "pm:ha:bbbb:chat.a", true},
		{"pm:ha:bbbb:a:b", "a:b", "pm:ha:bbbb:a:b", true},
		{"pm:h:", "", "", false},
		{"pm:ha:bbbb", "", "", false},
		{"pm:ha::c", "", "", false},
		{"pm:hx:chat.a", "", "", false},
		{"pm:hello", "", "", false},
		{"other", "", "", false},
	} {
		ch, dst, ok := handoffKey(tc.key, run)
		if ch != tc.channel || dst != tc.dst || ok != tc.ok {
			t.Errorf("handoffKey(%q) = %q, %q, %v; want %q, %q, %v", tc.key, ch, dst, ok, tc.channel, tc.dst, tc.ok)
		}
	}
}

// The target of a channel is a function of the channel and the ready set
// only, every peer is tried once, and channels spread over the peers.
func TestTargetOrder(t *testing.T) {
	peers := []discovery.Node{{ID: "a"}, {ID: "b"}, {ID: "c"}}
	count := map[string]int{}
	for i := range 300 {
		ch := fmt.Sprintf("chat.%d", i)
		order := targetOrder(peers, ch)
		if again := targetOrder(peers, ch); again[0].ID != order[0].ID {
			t.Fatalf("%s: target %s, then %s", ch, order[0].ID, again[0].ID)
		}
		seen := map[string]bool{}
		for _, p := range order {
			seen[p.ID] = true
		}
		if len(order) != 3 || len(seen) != 3 {
			t.Fatalf("%s: order %v", ch, order)
		}
		count[order[0].ID]++
	}
	for _, p := range peers {
		if count[p.ID] < 50 {
			t.Errorf("node %s is the target of %d of 300 channels: %v", p.ID, count[p.ID], count)
		}
	}
}
