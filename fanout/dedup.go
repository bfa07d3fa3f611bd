package fanout

// dedup drops a message it has already seen, by its publisher and sequence
// number, the way an anti-replay window does (RFC 4303, 3.4.3): per stream
// it keeps the highest seq seen and a ring of n bits, one per seq in
// (high-n, high]. A publisher's seqs grow by one per message, so a stream
// costs n/8 bytes however fast it publishes, and a lookup is a bit test:
// no per-message map insert and delete (a set of the last 65536 ids was
// the largest cost of the receive path in the benchmark's profile).
//
// A message matched by a channel subscription and by a pattern
// subscription arrives twice from Redis (message and pmessage) and both are
// wanted, so a stream is a publisher through one subscription kind: the
// pattern's hash is part of its key. The key holds no pointer, so the
// garbage collector does not scan the table. Two patterns whose hashes
// collide would share a stream: a chance of 2^-64 per pair.
//
// A seq older than the window (seq <= high-n) is let through: the window
// says how far back duplicates are caught (Config.DedupWindow). At most
// maxStreams streams are remembered; beyond that the one seen least
// recently is forgotten. Not safe for concurrent use; the sequencer guards
// it.
type dedup struct {
	n          uint64 // window in seqs, a multiple of 64
	maxStreams int
	streams    map[streamKey]*seqWindow
	tick       uint64 // counts adds, for least-recently-seen eviction
}

type streamKey struct {
	pub     uint64
	pattern uint64 // patternKey of the pattern; 0 for a channel subscription
}

type seqWindow struct {
	high uint64   // highest seq seen
	bits []uint64 // bit seq%n is set when seq in (high-n, high] was seen
	used uint64   // dedup.tick of the last add
}

// dedupStreams is how many publisher streams a client remembers at most: at
// the default window of 65536 seqs (8 KiB a stream), 8 MiB.
const dedupStreams = 1024

// patternKey is 0 for no pattern (a channel subscription), else a non-zero
// hash of the pattern.
func patternKey(pattern string) uint64 {
	if pattern == "" {
		return 0
	}
	return channelHash(pattern) | 1
}

func newDedup(window, maxStreams int) *dedup {
	n := (uint64(max(window, 64)) + 63) &^ 63
	return &dedup{n: n, maxStreams: maxStreams, streams: make(map[streamKey]*seqWindow)}
}

// add records seq of the stream and reports whether it was new.
func (d *dedup) add(k streamKey, seq uint64) bool {
	d.tick++
	w := d.streams[k]
	if w == nil {
		if len(d.streams) >= d.maxStreams {
			d.evict()
		}
		w = &seqWindow{bits: make([]uint64, d.n/64)}
		d.streams[k] = w
	}
	w.used = d.tick
	return w.add(seq, d.n)
}

// evict forgets the stream seen least recently. It scans every stream, but
// runs only when a new publisher shows up while the table is full.
func (d *dedup) evict() {
	var oldest streamKey
	first := true
	var at uint64
	for k, w := range d.streams {
		if first || w.used < at {
			oldest, at, first = k, w.used, false
		}
	}
	delete(d.streams, oldest)
}

func (w *seqWindow) add(seq, n uint64) bool {
	switch {
	case seq > w.high:
		w.forget(w.high+1, seq, n)
		w.high = seq
	case seq+n <= w.high:
		return true // older than the window: cannot tell, let it through
	case w.bits[(seq%n)/64]&(1<<(seq%64)) != 0:
		return false
	}
	w.bits[(seq%n)/64] |= 1 << (seq % 64)
	return true
}

// forget clears the bits of seqs [from, to), whose ring slots still hold
// seqs n older.
func (w *seqWindow) forget(from, to, n uint64) {
	if to-from >= n {
		clear(w.bits)
		return
	}
	for s := from; s < to; {
		if s%64 == 0 && to-s >= 64 {
			w.bits[(s%n)/64] = 0
			s += 64
			continue
		}
		w.bits[(s%n)/64] &^= 1 << (s % 64)
		s++
	}
}
