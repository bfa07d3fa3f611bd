package fanout

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

// A message delivered before its predecessor on the channel (the
// sequencer released it after ReorderWindow while the predecessor was
// late) is covered by itself; the predecessor is not, until it comes. A
// subscriber that leaves in between resumes with the predecessor, and
// without a duplicate of the later message.
func TestPositionLatePredecessor(t *testing.T) {
	const pub = 7
	type step struct{ seq, prev uint64 }
	tests := []struct {
		name     string
		steps    []step
		covered  []uint64
		missing  []uint64
		extended bool // encodes as p2
	}{
		{name: "in order", steps: []step{{10, 0}, {11, 10}, {13, 11}}, covered: []uint64{10, 11, 12, 13}, missing: []uint64{14}},
		{name: "concurrent publishes name the same predecessor", steps: []step{{10, 0}, {12, 10}, {11, 10}}, covered: []uint64{10, 11, 12}, missing: []uint64{13}},
		{name: "late predecessor", steps: []step{{10, 0}, {12, 11}}, covered: []uint64{10, 12}, missing: []uint64{11, 13}, extended: true},
		{name: "late predecessor arrives", steps: []step{{10, 0}, {12, 11}, {13, 12}, {11, 10}}, covered: []uint64{10, 11, 12, 13}, missing: []uint64{14}},
		{name: "two late", steps: []step{{10, 0}, {13, 12}, {12, 11}}, covered: []uint64{10, 12, 13}, missing: []uint64{11, 14}, extended: true},
		{name: "duplicate", steps: []step{{10, 0}, {12, 11}, {12, 11}, {10, 0}}, covered: []uint64{10, 12}, missing: []uint64{11}, extended: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := newPosition(0)
			for _, s := range tt.steps {
				p.add(pub, s.seq, s.prev, int64(s.seq))
			}
			enc := p.encode()
			if got := strings.HasPrefix(enc, positionPrefix2); got != tt.extended {
				t.Errorf("encoded %s: p2 = %v, want %v", enc, got, tt.extended)
			}
			q, err := decodePosition(enc)
			if err != nil {
				t.Fatalf("decode %s: %v", enc, err)
			}
			for _, pos := range []*position{p, q} {
				for _, s := range tt.covered {
					if !pos.covers(pub, s, 1) {
						t.Errorf("seq %d not covered", s)
					}
				}
				for _, s := range tt.missing {
					if pos.covers(pub, s, 1) {
						t.Errorf("seq %d covered", s)
					}
				}
			}
		})
	}
	// Past maxExtras the mark jumps over the late ones.
	p := newPosition(0)
	p.add(pub, 1, 0, 1)
	for i := uint64(0); i <= maxExtras; i++ {
		p.add(pub, 10+2*i, 9+2*i, 2)
	}
	if !p.covers(pub, 9, 1) || len(p.pubs[pub].extra) != 0 {
		t.Errorf("after %d extras: mark %d, %d extras", maxExtras+1, p.pubs[pub].seq, len(p.pubs[pub].extra))
	}
	for _, bad := range []string{"p2.", "p2.!!", "p3.AAAA", "p1.!!"} {
		if _, err := decodePosition(bad); err == nil {
			t.Errorf("decodePosition(%q) accepted", bad)
		}
	}
}

// FuzzPosition: any string decodes or is refused, never panics; what
// decodes encodes to a position that covers the same messages.
func FuzzPosition(f *testing.F) {
	p := newPosition(5)
	p.add(3, 10, 0, 6)
	p.add(3, 12, 11, 7)
	p.add(9, 4, 2, 8)
	f.Add(p.encode(), uint64(3), uint64(11))
	f.Add(newPosition(1).encode(), uint64(1), uint64(1))
	f.Add("p2.AAAA", uint64(0), uint64(0))
	f.Fuzz(func(t *testing.T, s string, pub, seq uint64) {
		p, err := decodePosition(s)
		if err != nil {
			return
		}
		q, err := decodePosition(p.encode())
		if err != nil {
			t.Fatalf("re-encoded %q does not decode: %v", p.encode(), err)
		}
		for _, sq := range []uint64{seq, seq + 1, seq + 2} {
			if p.covers(pub, sq, int64(sq)) != q.covers(pub, sq, int64(sq)) {
				t.Fatalf("coverage of %d/%d differs after a round trip", pub, sq)
			}
		}
	})
}

// BenchmarkPositionTrack is the per-delivery cost of a history channel's
// position: the message added, the position after it encoded.
func BenchmarkPositionTrack(b *testing.B) {
	for _, pubs := range []int{1, 4, 64} {
		b.Run(fmt.Sprintf("pubs=%d", pubs), func(b *testing.B) {
			p := newPosition(1)
			seq := make([]uint64, pubs)
			b.ReportAllocs()
			for i := 0; b.Loop(); i++ {
				k := i % pubs
				seq[k]++
				p.add(uint64(k+1)*0x9e3779b97f4a7c15, seq[k], seq[k]-1, int64(i+2))
				if len(p.encode()) == 0 {
					b.Fatal("empty position")
				}
			}
		})
	}
}

// CheckPosition accepts what a message's Position gives and refuses
// anything else with ErrBadPosition, so a program can refuse bad input
// before it connects.
func TestCheckPosition(t *testing.T) {
	p := newPosition(0)
	p.add(7, 3, 2, 1700)
	for _, tc := range []struct {
		pos string
		ok  bool
	}{
		{p.encode(), true},
		{"", false},
		{"nonsense", false},
		{positionPrefix + "!!", false},
		{positionPrefix + strings.Repeat("A", 70000), false},
	} {
		err := CheckPosition(tc.pos)
		if tc.ok != (err == nil) || (err != nil && !errors.Is(err, ErrBadPosition)) {
			t.Errorf("CheckPosition(%.20q) = %v, want ok %v", tc.pos, err, tc.ok)
		}
	}
}
