package ws

import (
	"strconv"
	"testing"
)

// TestFrameQueue: frames come out in the order they went in, across the
// ring's growth and wrap-around; a push beyond the limit fails; only a
// push onto an empty queue wakes the writer; a pop from a full queue
// signals room; a drained queue keeps at most keepRing slots.
func TestFrameQueue(t *testing.T) {
	for _, tc := range []struct {
		name  string
		limit int
		ops   string // p: push, o: pop (digits repeat the next op)
	}{
		{"fill and drain", 5, "5p5o"},
		{"wrap around", 4, "3p2o3p4o"},
		{"grow while wrapped", 64, "6p4o30p32o"},
		{"over the limit", 3, "4p3o"},
		{"large, then drained", 256, "200p200o"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			q := newFrameQueue(tc.limit)
			var want []*outFrame
			next := 0
			repeat := ""
			for _, op := range tc.ops {
				if op >= '0' && op <= '9' {
					repeat += string(op)
					continue
				}
				n := 1
				if repeat != "" {
					n, _ = strconv.Atoi(repeat)
					repeat = ""
				}
				for range n {
					switch op {
					case 'p':
						f := &outFrame{id: strconv.Itoa(next)}
						next++
						wasEmpty := len(want) == 0
						drain(q.wake)
						ok := q.push(f)
						if ok != (len(want) < tc.limit) {
							t.Fatalf("push with %d of %d queued: %v", len(want), tc.limit, ok)
						}
						if ok {
							want = append(want, f)
						}
						if woke := len(q.wake) == 1; woke != (ok && wasEmpty) {
							t.Fatalf("push onto %d frames woke the writer: %v", len(want)-1, woke)
						}
					case 'o':
						full := len(want) == tc.limit
						drain(q.room)
						f, ok := q.pop()
						if !ok || f != want[0] {
							t.Fatalf("pop: %v %v, want frame %s", f, ok, want[0].id)
						}
						want = want[1:]
						if room := len(q.room) == 1; room != full {
							t.Fatalf("pop from a full queue signalled room: %v, full: %v", room, full)
						}
					}
					if q.len() != len(want) {
						t.Fatalf("len %d, want %d", q.len(), len(want))
					}
				}
			}
			if _, ok := q.pop(); ok || len(q.ring) > keepRing {
				t.Fatalf("drained queue: pop %v, %d slots kept", ok, len(q.ring))
			}
		})
	}
}

// drain empties a signal channel.
func drain(c chan struct{}) {
	select {
	case <-c:
	default:
	}
}
