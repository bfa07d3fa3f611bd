package bench

import (
	"math/bits"
	"sync"
	"sync/atomic"
	"time"
)

// histogram counts latencies in nanoseconds in log-linear buckets: 64
// buckets per power of two, so a quantile is within 1.6% of the truth. Not
// safe for concurrent use: each reading goroutine has its own (recorder).
type histogram struct {
	counts [(64 - subBits + 1) << subBits]uint64
	n      uint64
}

const subBits = 6

func bucketOf(v int64) int {
	if v < 0 {
		v = 0
	}
	shift := bits.Len64(uint64(v)) - (subBits + 1)
	if shift < 0 {
		shift = 0
	}
	return shift<<subBits + int(uint64(v)>>uint(shift))
}

// valueOf is the middle of bucket i.
func valueOf(i int) int64 {
	if i < 2<<subBits {
		return int64(i)
	}
	shift := i>>subBits - 1
	m := int64(i - shift<<subBits)
	return m<<shift + (int64(1)<<shift)/2
}

func (h *histogram) add(ns int64) {
	h.counts[bucketOf(ns)]++
	h.n++
}

func (h *histogram) merge(o *histogram) {
	for i, c := range o.counts {
		h.counts[i] += c
	}
	h.n += o.n
}

// quantile returns the q-quantile (0 < q ≤ 1), or 0 when empty.
func (h *histogram) quantile(q float64) time.Duration {
	if h.n == 0 {
		return 0
	}
	rank := uint64(q*float64(h.n) + 0.5)
	rank = max(rank, 1)
	var seen uint64
	for i, c := range h.counts {
		seen += c
		if seen >= rank {
			return time.Duration(valueOf(i))
		}
	}
	return time.Duration(valueOf(len(h.counts) - 1))
}

// recorder is what one reading goroutine records: a count the progress
// loop reads, the time of the last delivery and a latency histogram.
type recorder struct {
	n    atomic.Uint64
	last atomic.Int64 // unix nanos of the last delivery
	h    histogram    // written by the owning goroutine only
}

// record notes one delivery of a message stamped at stamp (unix nanos).
func (r *recorder) record(stamp int64) {
	now := time.Now().UnixNano()
	r.h.add(now - stamp)
	r.last.Store(now)
	r.n.Add(1)
}

// sink hands out one recorder per reading goroutine and sums them. It is
// safe for concurrent use; the histograms may be read (merged) only after
// every reader stopped.
type sink struct {
	mu   sync.Mutex // guards recs
	recs []*recorder
}

func (s *sink) recorder() *recorder {
	r := &recorder{}
	s.mu.Lock()
	s.recs = append(s.recs, r)
	s.mu.Unlock()
	return r
}

func (s *sink) delivered() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	var n uint64
	for _, r := range s.recs {
		n += r.n.Load()
	}
	return n
}

func (s *sink) lastDelivery() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	var t int64
	for _, r := range s.recs {
		t = max(t, r.last.Load())
	}
	return t
}

// histogram merges every recorder's; call once the readers stopped.
func (s *sink) histogram() *histogram {
	s.mu.Lock()
	defer s.mu.Unlock()
	h := &histogram{}
	for _, r := range s.recs {
		h.merge(&r.h)
	}
	return h
}
