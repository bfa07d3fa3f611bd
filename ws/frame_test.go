package ws

import (
	"bytes"
	"strconv"
	"testing"
	"time"
)

// TestSharedFrame: the frame the pump builds once is a final, unmasked
// text frame whose header carries the JSON's length in the shortest form
// RFC 6455 5.2 allows, followed by the JSON itself, unchanged.
func TestSharedFrame(t *testing.T) {
	for _, tc := range []struct {
		n    int
		head []byte
	}{
		{0, []byte{0x81, 0}},
		{125, []byte{0x81, 125}},
		{126, []byte{0x81, 126, 0, 126}},
		{65535, []byte{0x81, 126, 0xff, 0xff}},
		{65536, []byte{0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0}},
	} {
		t.Run(strconv.Itoa(tc.n), func(t *testing.T) {
			json := bytes.Repeat([]byte{'x'}, tc.n)
			f := sharedFrame(append(newHeadroom(tc.n), json...), &outFrame{})
			if !bytes.Equal(f.b, json) {
				t.Fatalf("b is %d bytes, want the %d of the JSON", len(f.b), tc.n)
			}
			if !bytes.Equal(f.wire[:len(tc.head)], tc.head) || !bytes.Equal(f.wire[len(tc.head):], json) {
				t.Fatalf("frame starts % x, want % x then the JSON", f.wire[:min(len(f.wire), 10)], tc.head)
			}
		})
	}
}

// TestWriteDelay: with WriteDelay a subscriber's writer, woken by the
// first of a burst of messages, waits, and the ones published meanwhile go
// out in the same batch; without it each message published on its own
// goes out in a batch of its own.
func TestWriteDelay(t *testing.T) {
	t.Parallel()
	const n = 10
	for _, tc := range []struct {
		name       string
		delay      time.Duration
		maxBatches float64
		minBatches float64
	}{
		{"off", 0, n + 1, n}, // + 1: the subscribe's ok may be counted after batches0
		{"on", 2 * time.Second, n / 2, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			g := newGW(t, Config{Insecure: true, WriteDelay: tc.delay}, gwOptions{})
			c := g.dial(t, "", nil)
			c.mustOK(OpSubscribe, "burst", nil)
			batches0 := g.metric("write_batches")
			for i := range n {
				if code, body := g.post(t, "/api/publish/burst", "", []byte(strconv.Itoa(i))); code != 200 {
					t.Fatalf("publish: %d %v", code, body)
				}
				if tc.delay == 0 { // each message is written before the next is published
					if m := c.message(10 * time.Second); string(m.Data) != strconv.Itoa(i) {
						t.Fatalf("message %d: %s", i, m.Data)
					}
				}
			}
			for i := range n {
				if tc.delay != 0 {
					if m := c.message(10 * time.Second); string(m.Data) != strconv.Itoa(i) {
						t.Fatalf("message %d: %s", i, m.Data)
					}
				}
			}
			// The batch is counted after its flush.
			waitFor(t, 5*time.Second, "the last batch counted", func() bool { return g.metric("write_batches")-batches0 >= tc.minBatches })
			if b := g.metric("write_batches") - batches0; b < tc.minBatches || b > tc.maxBatches {
				t.Fatalf("WriteDelay %s: %v batches for %d messages, want %v to %v", tc.delay, b, n, tc.minBatches, tc.maxBatches)
			}
		})
	}
}
