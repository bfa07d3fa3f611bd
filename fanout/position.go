package fanout

import (
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strings"
)

// maxPositionPubs bounds the publishers a position names. Past it the
// least recent one is dropped and the floor rises to its last message:
// exactness then rests on that floor (see docs/history.md).
const maxPositionPubs = 256

// positionPrefix versions the encoding; positionPrefix2 is the same with
// each publisher's extras (see pubMark), written only when a position has
// any, so that most positions stay readable by p1-only gateways during a
// rolling upgrade.
const (
	positionPrefix  = "p1."
	positionPrefix2 = "p2."
)

// maxExtras bounds a publisher's extras in a position. Past it the mark
// jumps to the highest of them: the missing predecessors are then taken
// as covered (an exactness the position gives up only after that many
// messages overtook a late one).
const maxExtras = 64

// ErrBadPosition is returned for a since position that does not decode.
var ErrBadPosition = errors.New("fanout: bad history position")

// position is how far a subscriber got on one channel: the highest seq
// delivered per publisher, and a floor time below which a message of a
// publisher not named is covered too. at is the newest ts covered.
type position struct {
	floor int64 // unix nanos
	at    int64 // unix nanos
	pubs  map[uint64]pubMark
	// order is the keys of pubs, ascending, as encode writes them; it is
	// rebuilt when its length no longer matches (a publisher came or was
	// evicted), so the per-message encode sorts nothing.
	order []uint64
}

type pubMark struct {
	seq uint64
	ts  int64 // the message's publish time, to raise floor on eviction
	// extra holds messages delivered before their predecessor on the
	// channel (seq -> prev): released by the sequencer after
	// ReorderWindow while the predecessor was late. They are covered one
	// by one, and the predecessor is not: a subscriber that leaves before
	// it comes resumes with it. When it comes, the mark moves up over
	// them.
	extra map[uint64]uint64
}

func newPosition(floor int64) *position {
	return &position{floor: floor, at: floor, pubs: map[uint64]pubMark{}}
}

// covers reports whether the message (pub, seq, ts) is covered.
func (p *position) covers(pub, seq uint64, ts int64) bool {
	if m, ok := p.pubs[pub]; ok {
		_, extra := m.extra[seq]
		return seq <= m.seq || extra
	}
	return ts <= p.floor
}

// add records a delivered message, whose predecessor on the channel is
// prev (0: none known). A publisher's first message sets its mark; after
// that the mark moves only over messages whose predecessor is covered,
// and one that came before its predecessor is an extra.
func (p *position) add(pub, seq, prev uint64, ts int64) {
	p.at = max(p.at, ts)
	m, ok := p.pubs[pub]
	if !ok {
		if len(p.pubs) >= maxPositionPubs {
			p.evict()
		}
		p.pubs[pub] = pubMark{seq: seq, ts: ts}
		return
	}
	if _, dup := m.extra[seq]; dup || seq <= m.seq {
		return
	}
	if prev > m.seq {
		if len(m.extra) < maxExtras {
			if m.extra == nil {
				m.extra = map[uint64]uint64{}
			}
			m.extra[seq] = prev
			p.pubs[pub] = m
			return
		}
		// Too many: give up on the late ones (see maxExtras).
		for s := range m.extra {
			seq = max(seq, s)
		}
		clear(m.extra)
	}
	m.seq, m.ts = seq, ts
	// The extras whose predecessor is now covered join the mark.
	for moved := true; moved && len(m.extra) > 0; {
		moved = false
		for s, pv := range m.extra {
			switch {
			case s <= m.seq:
				delete(m.extra, s)
			case pv <= m.seq:
				m.seq = s
				delete(m.extra, s)
				moved = true
			}
		}
	}
	if len(m.extra) == 0 {
		m.extra = nil
	}
	p.pubs[pub] = m
}

// evict drops the publisher whose last message is oldest, raising the
// floor to it: every message of it up to then is covered by the floor.
func (p *position) evict() {
	var oldest uint64
	first := true
	for pub, m := range p.pubs {
		if first || m.ts < p.pubs[oldest].ts || (m.ts == p.pubs[oldest].ts && pub < oldest) {
			oldest, first = pub, false
		}
	}
	p.floor = max(p.floor, p.pubs[oldest].ts)
	delete(p.pubs, oldest)
	p.order = p.order[:0]
}

func (p *position) clone() *position {
	q := &position{floor: p.floor, at: p.at, pubs: make(map[uint64]pubMark, len(p.pubs))}
	for k, v := range p.pubs {
		if v.extra != nil {
			extra := make(map[uint64]uint64, len(v.extra))
			for s, pv := range v.extra {
				extra[s] = pv
			}
			v.extra = extra
		}
		q.pubs[k] = v
	}
	return q
}

// encode is the opaque string users see: "p1." and base64url of floor,
// at, the count, then per publisher (sorted) its id (8 bytes) and seq.
// The per-publisher ts is not kept: a decoded position uses at instead,
// which only matters if it is later extended past maxPositionPubs.
//
// It runs for every message delivered on a history channel, so it builds
// the bytes on the stack and allocates only the string.
func (p *position) encode() string {
	if len(p.order) != len(p.pubs) {
		p.order = p.order[:0]
		for k := range p.pubs {
			p.order = append(p.order, k)
		}
		slices.Sort(p.order)
	}
	var stack [512]byte
	b, extras := p.appendBinary(stack[:0], false)
	if extras {
		b, _ = p.appendBinary(b[:0], true)
	}
	prefix := positionPrefix
	if extras {
		prefix = positionPrefix2
	}
	var out [1024]byte
	o := append(out[:0], prefix...)
	return string(base64.RawURLEncoding.AppendEncode(o, b))
}

// appendBinary appends the position's bytes before base64: with the
// publishers' extras (p2) or without (p1). Without, it stops and reports
// true at the first publisher that has extras.
func (p *position) appendBinary(b []byte, withExtras bool) ([]byte, bool) {
	b = binary.AppendUvarint(b, uint64(p.floor))
	b = binary.AppendUvarint(b, uint64(p.at))
	b = binary.AppendUvarint(b, uint64(len(p.order)))
	for _, k := range p.order {
		m := p.pubs[k]
		if !withExtras && len(m.extra) > 0 {
			return b, true
		}
		b = binary.BigEndian.AppendUint64(b, k)
		b = binary.AppendUvarint(b, m.seq)
		if withExtras { // p2: the count, then (seq, prev) pairs by seq
			seqs := make([]uint64, 0, len(m.extra))
			for s := range m.extra {
				seqs = append(seqs, s)
			}
			slices.Sort(seqs)
			b = binary.AppendUvarint(b, uint64(len(seqs)))
			for _, s := range seqs {
				b = binary.AppendUvarint(b, s)
				b = binary.AppendUvarint(b, m.extra[s])
			}
		}
	}
	return b, withExtras
}

// CheckPosition reports whether s is a position this package wrote (a
// message's Position or a History's Pos), without connecting anywhere:
// a program can refuse a bad one before it opens a client. The error wraps
// ErrBadPosition.
func CheckPosition(s string) error {
	if _, err := decodePosition(s); err != nil {
		return fmt.Errorf("%w: %.40q", err, s)
	}
	return nil
}

// decodePosition parses what encode wrote. A decoded publisher's ts is
// unknown; at stands in for it (for eviction only).
func decodePosition(s string) (*position, error) {
	rest, ok := strings.CutPrefix(s, positionPrefix)
	v2 := false
	if !ok {
		rest, ok = strings.CutPrefix(s, positionPrefix2)
		v2 = true
	}
	if !ok || len(rest) > 65536 {
		return nil, ErrBadPosition
	}
	b, err := base64.RawURLEncoding.DecodeString(rest)
	if err != nil {
		return nil, ErrBadPosition
	}
	read := func() (uint64, bool) {
		v, n := binary.Uvarint(b)
		if n <= 0 {
			return 0, false
		}
		b = b[n:]
		return v, true
	}
	floor, ok1 := read()
	at, ok2 := read()
	n, ok3 := read()
	if !ok1 || !ok2 || !ok3 || n > maxPositionPubs || floor > 1<<62 || at > 1<<62 || at < floor {
		return nil, ErrBadPosition
	}
	p := &position{floor: int64(floor), at: int64(at), pubs: make(map[uint64]pubMark, n)}
	var last uint64
	for i := uint64(0); i < n; i++ {
		if len(b) < 8 {
			return nil, ErrBadPosition
		}
		pub := binary.BigEndian.Uint64(b)
		b = b[8:]
		seq, ok := read()
		if !ok || pub == 0 || seq == 0 || (i > 0 && pub <= last) {
			return nil, ErrBadPosition
		}
		last = pub
		m := pubMark{seq: seq, ts: p.at}
		if v2 {
			k, ok := read()
			if !ok || k > maxExtras {
				return nil, ErrBadPosition
			}
			var lastExtra uint64
			for j := uint64(0); j < k; j++ {
				es, ok1 := read()
				pv, ok2 := read()
				if !ok1 || !ok2 || es <= seq || es <= lastExtra || pv <= seq || pv >= es {
					return nil, ErrBadPosition
				}
				lastExtra = es
				if m.extra == nil {
					m.extra = map[uint64]uint64{}
				}
				m.extra[es] = pv
			}
		}
		p.pubs[pub] = m
	}
	if len(b) != 0 {
		return nil, ErrBadPosition
	}
	return p, nil
}
