package fanout

// msgKey identifies one delivery stream of one message: a message matched
// by a channel subscription and by a pattern subscription arrives twice from
// Redis (message and pmessage) and both are wanted, so the pattern is part
// of the key.
type msgKey struct {
	pub, seq uint64
	pattern  string
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
