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
	}
	for _, tc := range tests {
		raw := string(appendEnvelope(nil, tc.env, []byte(tc.payload)))
		got, payload, ok := parseEnvelope(raw)
		if !ok || got != tc.env || payload != tc.payload {
			t.Errorf("round trip of %+v %q: got %+v %q ok=%v", tc.env, tc.payload, got, payload, ok)
		}
	}
}

func TestEnvelopeRejectsMalformed(t *testing.T) {
	for _, raw := range []string{
		"", "hello", "pm1 ", "pm1 zz 1 0 5\nx", "pm1 0000000000000001 0 0 5\nx",
		"pm1 0000000000000001 5 5 5\nx", "pm1 0000000000000001 5 0 x\nx", "pm1 0000000000000001 5 0 5",
		"pm1 000000000000001 5 0 5\nx", "pm1 0000000000000000 5 0 5\nx", "pm1 0000000000000001 5 0\nx",
		"pm1 0000000000000001 5 0 5 6\nx", "pm1 " + strings.Repeat("1", 200) + "\nx",
	} {
		if _, payload, ok := parseEnvelope(raw); ok || payload != raw {
			t.Errorf("parseEnvelope(%q) accepted it", raw)
		}
	}
}

func FuzzEnvelope(f *testing.F) {
	f.Add("pm1 0000000000000001 2 1 5\nhello")
	f.Add("plain message")
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
	d := newDedup(3)
	for i := uint64(1); i <= 3; i++ {
		if !d.add(msgKey{pub: 1, seq: i}) {
			t.Fatalf("seq %d seen as duplicate", i)
		}
	}
	if d.add(msgKey{pub: 1, seq: 2}) {
		t.Fatal("duplicate within the window accepted")
	}
	if !d.add(msgKey{pub: 1, seq: 2, pattern: patternKey("p*")}) {
		t.Fatal("same message through a pattern counted as duplicate")
	}
	d.add(msgKey{pub: 1, seq: 4})
	if !d.add(msgKey{pub: 1, seq: 1}) {
		t.Fatal("key beyond the window still remembered")
	}
	if len(d.set) != 3 {
		t.Fatalf("window holds %d keys, want 3", len(d.set))
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
	d := newDedup(65536)
	b.ReportAllocs()
	for i := range b.N {
		d.add(msgKey{pub: 7, seq: uint64(i)})
	}
}
