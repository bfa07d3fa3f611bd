package fanout

import (
	"encoding/base64"
	"encoding/binary"
	"errors"
	"sort"
	"strings"
)

// maxPositionPubs bounds the publishers a position names. Past it the
// least recent one is dropped and the floor rises to its last message:
// exactness then rests on that floor (see docs/history.md).
const maxPositionPubs = 256

// positionPrefix versions the encoding.
const positionPrefix = "p1."

// ErrBadPosition is returned for a since position that does not decode.
var ErrBadPosition = errors.New("fanout: bad history position")

// position is how far a subscriber got on one channel: the highest seq
// delivered per publisher, and a floor time below which a message of a
// publisher not named is covered too. at is the newest ts covered.
type position struct {
	floor int64 // unix nanos
	at    int64 // unix nanos
	pubs  map[uint64]pubMark
}

type pubMark struct {
	seq uint64
	ts  int64 // the message's publish time, to raise floor on eviction
}

func newPosition(floor int64) *position {
	return &position{floor: floor, at: floor, pubs: map[uint64]pubMark{}}
}

// covers reports whether the message (pub, seq, ts) is covered.
func (p *position) covers(pub, seq uint64, ts int64) bool {
	if m, ok := p.pubs[pub]; ok {
		return seq <= m.seq
	}
	return ts <= p.floor
}

// add records a delivered message.
func (p *position) add(pub, seq uint64, ts int64) {
	if m, ok := p.pubs[pub]; ok {
		if seq > m.seq {
			p.pubs[pub] = pubMark{seq, ts}
		}
	} else {
		if len(p.pubs) >= maxPositionPubs {
			p.evict()
		}
		p.pubs[pub] = pubMark{seq, ts}
	}
	p.at = max(p.at, ts)
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
}

func (p *position) clone() *position {
	q := &position{floor: p.floor, at: p.at, pubs: make(map[uint64]pubMark, len(p.pubs))}
	for k, v := range p.pubs {
		q.pubs[k] = v
	}
	return q
}

// encode is the opaque string users see: "p1." and base64url of floor,
// at, the count, then per publisher (sorted) its id (8 bytes) and seq.
// The per-publisher ts is not kept: a decoded position uses at instead,
// which only matters if it is later extended past maxPositionPubs.
func (p *position) encode() string {
	pubs := make([]uint64, 0, len(p.pubs))
	for k := range p.pubs {
		pubs = append(pubs, k)
	}
	sort.Slice(pubs, func(i, j int) bool { return pubs[i] < pubs[j] })
	b := make([]byte, 0, 24+len(pubs)*14)
	b = binary.AppendUvarint(b, uint64(p.floor))
	b = binary.AppendUvarint(b, uint64(p.at))
	b = binary.AppendUvarint(b, uint64(len(pubs)))
	for _, k := range pubs {
		b = binary.BigEndian.AppendUint64(b, k)
		b = binary.AppendUvarint(b, p.pubs[k].seq)
	}
	return positionPrefix + base64.RawURLEncoding.EncodeToString(b)
}

// decodePosition parses what encode wrote. A decoded publisher's ts is
// unknown; at stands in for it (for eviction only).
func decodePosition(s string) (*position, error) {
	rest, ok := strings.CutPrefix(s, positionPrefix)
	if !ok || len(rest) > 8192 {
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
		p.pubs[pub] = pubMark{seq: seq, ts: p.at}
	}
	if len(b) != 0 {
		return nil, ErrBadPosition
	}
	return p, nil
}
