package fanout

import "github.com/cespare/xxhash/v2"

// msgKey identifies one delivery stream of one message: a message matched
// by a channel subscription and by a pattern subscription arrives twice from
// Redis (message and pmessage) and both are wanted, so the pattern is part
// of the key.
//
// The key holds no pointer (the pattern is hashed), so the garbage
// collector does not scan the window: with a string in the key, every GC
// cycle walked all DedupWindow entries of every client (tens of ms of mark
// phase per cycle in the benchmark). Two patterns whose hashes collide
// would share a key: a chance of 2^-64 per pair.
type msgKey struct {
	pub, seq uint64
	pattern  uint64 // patternKey of the pattern; 0 for a channel subscription
}

// patternKey is 0 for no pattern (a channel subscription), else a non-zero
// hash of the pattern.
func patternKey(pattern string) uint64 {
	if pattern == "" {
		return 0
	}
	return xxhash.Sum64String(pattern) | 1
}

// dedup remembers the last n keys, oldest forgotten first. Not safe for
// concurrent use; the sequencer guards it.
type dedup struct {
	ring []msgKey
	pos  int
	set  map[msgKey]struct{}
}

func newDedup(n int) *dedup {
	return &dedup{ring: make([]msgKey, 0, n), set: make(map[msgKey]struct{}, n)}
}

// add records k and reports whether it was new.
func (d *dedup) add(k msgKey) bool {
	if _, seen := d.set[k]; seen {
		return false
	}
	if len(d.ring) < cap(d.ring) {
		d.ring = append(d.ring, k)
	} else {
		delete(d.set, d.ring[d.pos])
		d.ring[d.pos] = k
		d.pos = (d.pos + 1) % len(d.ring)
	}
	d.set[k] = struct{}{}
	return true
}
