package fanout

import (
	"fmt"
	"strings"
	"testing"
)

func TestEnvelopeRoundTrip(t *testing.T) {
	tests := []struct {
		env     envelope
		payload string
	}{
		{envelope{pub: 1, seq: 1, prev: 0, ts: 0}, ""},
		{envelope{pub: 0xdeadbeefcafef00d, seq: 42, prev: 41, ts: 1764000000123456789}, "hello"},
		{envelope{pub: ^uint64(0), seq: ^uint64(0), prev: 7, ts: -5}, "line1\nline2\x00binary"},
		{envelope{pub: ^uint64(0), seq: ^uint64(0), prev: ^uint64(0) - 1, ts: -1 << 63, trace: testTraceparent}, "longest header"},
	}
	for _, tc := range tests {
		raw := string(appendEnvelope(nil, tc.env, []byte(tc.payload)))
		got, payload, ok := parseEnvelope(raw)
		if !ok || got != tc.env || payload != tc.payload {
			t.Errorf("round trip of %+v %q: got %+v %q ok=%v", tc.env, tc.payload, got, payload, ok)
		}
	}
}

const testTraceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

// TestEnvelopeOptionalFields: fields after the time are optional; a valid
// traceparent among them is the trace, anything else is skipped and never
// makes the message raw (docs/wire-format.md).
func TestEnvelopeOptionalFields(t *testing.T) {
	base := envelope{pub: 1, seq: 5, ts: 5}
	traced := base
	traced.trace = testTraceparent
	for _, tc := range []struct {
		raw  string
		want envelope
	}{
		{"pm1 0000000000000001 5 0 5\nx", base},
		{"pm1 0000000000000001 5 0 5 " + testTraceparent + "\nx", traced},
		{"pm1 0000000000000001 5 0 5 6\nx", base},                                                       // a field of a later version
		{"pm1 0000000000000001 5 0 5 future " + testTraceparent + " more\nx", traced},                   // the traceparent among others
		{"pm1 0000000000000001 5 0 5 " + strings.ToUpper(testTraceparent) + "\nx", base},                // uppercase: not W3C
		{"pm1 0000000000000001 5 0 5 01" + testTraceparent[2:] + "\nx", base},                           // another version
		{"pm1 0000000000000001 5 0 5 00-00000000000000000000000000000000-00f067aa0ba902b7-01\nx", base}, // zero trace id
		{"pm1 0000000000000001 5 0 5 00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01\nx", base}, // zero span id
		{"pm1 0000000000000001 5 0 5 " + testTraceparent[:54] + "\nx", base},                            // short
		{"pm1 0000000000000001 5 0 5 \nx", base},                                                        // a trailing space
	} {
		got, payload, ok := parseEnvelope(tc.raw)
		if !ok || got != tc.want || payload != "x" {
			t.Errorf("parseEnvelope(%q) = %+v %q %v, want %+v", tc.raw, got, payload, ok, tc.want)
		}
	}
}

func TestEnvelopeRejectsMalformed(t *testing.T) {
	for _, raw := range []string{
		"", "hello", "pm1 ", "pm1 zz 1 0 5\nx", "pm1 0000000000000001 0 0 5\nx",
		"pm1 0000000000000001 5 5 5\nx", "pm1 0000000000000001 5 0 x\nx", "pm1 0000000000000001 5 0 5",
		"pm1 000000000000001 5 0 5\nx", "pm1 0000000000000000 5 0 5\nx", "pm1 0000000000000001 5 0\nx",
		"pm1 " + strings.Repeat("1", 200) + "\nx",
		"pm1 0000000000000001 5 0 5 " + testTraceparent + " " + strings.Repeat("x", 200) + "\nx", // over maxHeader
	} {
		if _, payload, ok := parseEnvelope(raw); ok || payload != raw {
			t.Errorf("parseEnvelope(%q) accepted it", raw)
		}
	}
}

func FuzzEnvelope(f *testing.F) {
	f.Add("pm1 0000000000000001 2 1 5\nhello")
	f.Add("plain message")
	f.Add("pm1 0000000000000001 2 1 5 " + testTraceparent + "\nhello")
	f.Add("pm1 0000000000000001 2 1 5 x " + testTraceparent + "\nhello")
	f.Add("pm1 0000000000000001 2 1 5 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g\nhello")
	f.Fuzz(func(t *testing.T, raw string) {
		e, payload, ok := parseEnvelope(raw)
		if !ok {
			if payload != raw {
				t.Fatalf("rejected input must pass through whole")
			}
			return
		}
		again := string(appendEnvelope(nil, e, []byte(payload)))
		e2, p2, ok2 := parseEnvelope(again)
		if e.trace != "" && !validTraceparent(e.trace) {
			t.Fatalf("accepted an invalid trace field %q", e.trace)
		}
		if e.trace != "" {
			if sc, ok := parseTraceparent(e.trace); !ok || formatTraceparent(sc) != e.trace {
				t.Fatalf("trace field %q does not survive a parse and format", e.trace)
			}
		}
		if !ok2 || e2 != e || p2 != payload {
			t.Fatalf("re-encoding %q changed it: %q", raw, again)
		}
	})
}

func TestRendezvousMovesAboutOneNth(t *testing.T) {
	seeds := func(n int) []uint64 {
		var s []uint64
		for i := range n {
			s = append(s, nodeSeed(fmt.Sprintf("node-%d", i)))
		}
		return s
	}
	const channels = 20000
	three, four := seeds(3), seeds(4)
	counts := make([]int, 3)
	moved := 0
	for i := range channels {
		h := channelHash(fmt.Sprintf("channel-%d", i))
		a := rank(nil, h, three, nil)[0]
		b := rank(nil, h, four, nil)[0]
		counts[a]++
		if a != b {
			moved++
			if b != 3 {
				t.Fatalf("channel moved between two old nodes (%d -> %d) when a node joined", a, b)
			}
		}
	}
	for i, c := range counts {
		if c < channels/3*8/10 || c > channels/3*12/10 {
			t.Errorf("node %d is home of %d of %d channels: uneven", i, c, channels)
		}
	}
	if moved < channels/4*8/10 || moved > channels/4*12/10 {
		t.Errorf("%d of %d channels moved when a 4th node joined, want about 1/4", moved, channels)
	}
}

func TestRankPutsSuspectsLast(t *testing.T) {
	seeds := []uint64{nodeSeed("a"), nodeSeed("b"), nodeSeed("c")}
	h := channelHash("x")
	order := rank(nil, h, seeds, nil)
	suspect := order[0]
	again := rank(nil, h, seeds, func(i int) bool { return i == suspect })
	if again[len(again)-1] != suspect || again[0] != order[1] || again[1] != order[2] {
		t.Fatalf("order %v, with %d suspect: %v", order, suspect, again)
	}
}

func TestDedupWindow(t *testing.T) {
	pub := streamKey{pub: 1}
	pat := streamKey{pub: 1, pattern: patternKey("p*")}
	other := streamKey{pub: 2}
	type add struct {
		k    streamKey
		seq  uint64
		want bool // new
	}
	tests := []struct {
		name   string
		window int
		adds   []add
	}{
		{"in order, then a repeat", 64, []add{{pub, 1, true}, {pub, 2, true}, {pub, 3, true}, {pub, 2, false}, {pub, 3, false}}},
		{"a pattern is its own stream", 64, []add{{pub, 5, true}, {pat, 5, true}, {pat, 5, false}, {pub, 5, false}}},
		{"publishers are separate", 64, []add{{pub, 9, true}, {other, 9, true}, {other, 9, false}}},
		{"late but inside the window, once", 64, []add{{pub, 10, true}, {pub, 50, true}, {pub, 20, true}, {pub, 20, false}, {pub, 10, false}}},
		{"a gap is not seen", 128, []add{{pub, 1, true}, {pub, 200, true}, {pub, 100, true}, {pub, 150, true}, {pub, 199, true}, {pub, 100, false}}},
		{"older than the window passes", 64, []add{{pub, 1, true}, {pub, 65, true}, {pub, 1, true}, {pub, 1, true}, {pub, 2, true}, {pub, 2, false}}},
		{"the ring slot of a seq n older is reused", 64, []add{{pub, 3, true}, {pub, 67, true}, {pub, 67, false}, {pub, 66, true}, {pub, 3, true}}},
		{"a jump beyond the window clears it", 64, []add{{pub, 7, true}, {pub, 8, true}, {pub, 1000, true}, {pub, 999, true}, {pub, 1000, false}, {pub, 936, true}, {pub, 937, true}, {pub, 937, false}, {pub, 8, true}}},
		{"word-sized gaps", 256, []add{{pub, 1, true}, {pub, 64, true}, {pub, 300, true}, {pub, 64, false}, {pub, 65, true}, {pub, 128, true}, {pub, 192, true}, {pub, 256, true}, {pub, 299, true}, {pub, 300, false}, {pub, 128, false}}},
		{"window rounded up to 64", 3, []add{{pub, 1, true}, {pub, 60, true}, {pub, 1, false}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := newDedup(tt.window, 16)
			for i, a := range tt.adds {
				if got := d.add(a.k, a.seq); got != a.want {
					t.Fatalf("add #%d (%+v seq %d) = %v, want %v", i, a.k, a.seq, got, a.want)
				}
			}
		})
	}
}

// TestDedupForgetsLeastRecentStream: beyond maxStreams publishers the one
// seen least recently is forgotten (its duplicates pass again), the others
// are kept.
func TestDedupForgetsLeastRecentStream(t *testing.T) {
	d := newDedup(64, 3)
	for pub := uint64(1); pub <= 3; pub++ {
		d.add(streamKey{pub: pub}, 10)
	}
	d.add(streamKey{pub: 1}, 11) // 2 is now the least recent
	d.add(streamKey{pub: 4}, 10)
	if len(d.streams) != 3 {
		t.Fatalf("%d streams remembered, want 3", len(d.streams))
	}
	if !d.add(streamKey{pub: 2}, 10) {
		t.Fatal("the least recent stream was not forgotten")
	}
	if d.add(streamKey{pub: 4}, 10) {
		t.Fatal("the newest stream was forgotten")
	}
}

func BenchmarkEnvelopeEncode(b *testing.B) {
	payload := make([]byte, 128)
	buf := make([]byte, 0, 256)
	b.ReportAllocs()
	for i := range b.N {
		buf = appendEnvelope(buf[:0], envelope{pub: 0xdeadbeefcafef00d, seq: uint64(i) + 1, prev: uint64(i), ts: 1764000000123456789}, payload)
	}
}

func BenchmarkEnvelopeDecode(b *testing.B) {
	raw := string(appendEnvelope(nil, envelope{pub: 0xdeadbeefcafef00d, seq: 123456, prev: 123400, ts: 1764000000123456789}, make([]byte, 128)))
	b.ReportAllocs()
	for range b.N {
		if _, _, ok := parseEnvelope(raw); !ok {
			b.Fatal("decode failed")
		}
	}
}

func BenchmarkRendezvousPick(b *testing.B) {
	seeds := []uint64{nodeSeed("n1"), nodeSeed("n2"), nodeSeed("n3"), nodeSeed("n4")}
	dst := make([]int, 0, 8)
	b.ReportAllocs()
	for i := range b.N {
		dst = rank(dst, channelHash("orders.eu.shard-"+string(rune('a'+i%26))), seeds, nil)
	}
}

func BenchmarkDedup(b *testing.B) {
	d := newDedup(65536, dedupStreams)
	b.ReportAllocs()
	for i := range b.N {
		// 4 publishers, a subscriber that sees every 3rd message of each.
		d.add(streamKey{pub: uint64(i % 4)}, uint64(i/4)*3)
	}
}
