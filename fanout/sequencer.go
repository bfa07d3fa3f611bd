package fanout

import (
	"sort"
	"sync"
	"time"
)

// orderKey is one ordered stream: one publisher on one channel, as seen
// through one subscription kind (channel, or a pattern). Like streamKey it
// holds hashes, not strings, so the table is cheap to hash and is not scanned by
// the garbage collector; two streams would share an entry only if both
// hashes collided (2^-64 per pair).
type orderKey struct {
	pub     uint64
	channel uint64 // channelHash of the channel
	pattern uint64 // patternKey of the pattern
}

type held struct {
	m       *Message
	env     envelope
	key     orderKey
	expires time.Time
}

// sequencer sits between the node connections and the subscriptions. It
// drops duplicates and restores per-publisher, per-channel order.
//
// While the ready set is stable a channel's messages all pass through one
// node, so they arrive in order. When a channel's home moves, a message sent
// to the new home can overtake one still in flight on the old home's
// connection. Each envelope names its predecessor on the channel (prev), so
// such a message is held until the predecessor arrives, or ReorderWindow
// passes (the predecessor was lost with a crashed node).
//
// It is safe for concurrent use: one mutex guards everything and deliveries
// happen under it, which is what keeps them in order.
type sequencer struct {
	mu      sync.Mutex
	dedup   *dedup
	last    map[orderKey]uint64 // highest seq delivered per stream
	lastQ   []orderKey          // FIFO for bounding last
	lastMax int
	held    []held
	timer   *time.Timer
	window  time.Duration
	deliver func(*Message, string) // called under mu; second arg is the pattern
	m       *metrics
}

func newSequencer(dedupN int, window time.Duration, m *metrics, deliver func(*Message, string)) *sequencer {
	return &sequencer{dedup: newDedup(dedupN, dedupStreams), last: make(map[orderKey]uint64), lastMax: dedupN, window: window, deliver: deliver, m: m}
}

// push takes one message from a node. ok is false for a raw message
// (no envelope), which is delivered as is.
func (s *sequencer) push(m *Message, pattern string, env envelope, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !ok {
		s.deliver(m, pattern)
		return
	}
	pk := patternKey(pattern)
	if !s.dedup.add(streamKey{env.pub, pk}, env.seq) {
		s.m.duplicates.Inc()
		traceDuplicate(m)
		return
	}
	k := orderKey{env.pub, channelHash(m.Channel), pk}
	last, known := s.last[k]
	if known && env.prev > last {
		s.held = append(s.held, held{m: m, env: env, key: k, expires: time.Now().Add(s.window)})
		s.m.reordered.Inc()
		if s.timer == nil {
			s.timer = time.AfterFunc(s.window, s.expire)
		}
		return
	}
	s.emitAfter(k, m, env.seq, last, known)
	if len(s.held) > 0 {
		s.release(k)
	}
}

// emit delivers m, seq of stream k.
func (s *sequencer) emit(k orderKey, m *Message, seq uint64) {
	last, known := s.last[k]
	s.emitAfter(k, m, seq, last, known)
}

// emitAfter delivers m, seq of stream k, whose highest delivered seq is
// last (if known); a message that comes after a later one is counted out
// of order.
func (s *sequencer) emitAfter(k orderKey, m *Message, seq, last uint64, known bool) {
	if known && seq < last {
		s.m.outOfOrder.Inc()
	}
	if !known {
		s.lastQ = append(s.lastQ, k)
		if len(s.lastQ) > s.lastMax {
			delete(s.last, s.lastQ[0])
			s.lastQ = s.lastQ[1:]
		}
	}
	if !known || seq > last {
		s.last[k] = seq
	}
	s.deliver(m, m.Pattern)
}

// release delivers held messages of stream k whose predecessor is now in.
func (s *sequencer) release(k orderKey) {
	for progress := true; progress && len(s.held) > 0; {
		progress = false
		for i := 0; i < len(s.held); i++ {
			h := s.held[i]
			if h.key != k || h.env.prev > s.last[k] {
				continue
			}
			s.held = append(s.held[:i], s.held[i+1:]...)
			s.emit(k, h.m, h.env.seq)
			progress = true
			break
		}
	}
}

// expire delivers, in sequence order, held messages whose predecessor did
// not come within the window.
func (s *sequencer) expire() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.timer = nil
	now := time.Now()
	sort.SliceStable(s.held, func(i, j int) bool { return s.held[i].env.seq < s.held[j].env.seq })
	keep := s.held[:0]
	var due []held
	for _, h := range s.held {
		if now.Before(h.expires) {
			keep = append(keep, h)
		} else {
			due = append(due, h)
		}
	}
	s.held = keep
	for _, h := range due {
		k := h.key
		s.m.gaps.Inc()
		s.emit(k, h.m, h.env.seq)
		s.release(k)
	}
	if len(s.held) > 0 {
		next := s.held[0].expires
		for _, h := range s.held {
			if h.expires.Before(next) {
				next = h.expires
			}
		}
		s.timer = time.AfterFunc(time.Until(next)+time.Millisecond, s.expire)
	}
}

// stop cancels the expiry timer.
func (s *sequencer) stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.timer != nil {
		s.timer.Stop()
		s.timer = nil
	}
}
