package ws

import (
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// maxLimitedSubjects bounds how many token subjects without an open
// connection the gateway remembers at once.
const maxLimitedSubjects = 10000

// subjects is what the gateway limits per token subject (the JWT's sub),
// whatever the number of tokens, connections and requests it uses:
//
//   - one publish token bucket (Config.PublishRate, PublishBurst), shared
//     by all the subject's WebSocket connections and its HTTP publishes, so
//     that N connections, or POSTs beside them, do not multiply the rate;
//   - a count of its open WebSocket connections, capped at
//     Config.MaxConnectionsPerSubject.
//
// API keys (backends) and an insecure gateway are not tracked here.
//
// The table is bounded for subjects without an open connection: when it
// holds maxLimitedSubjects, those idle long enough for their bucket to have
// refilled are dropped (a new bucket is the same thing), then, if it is
// still full, the one seen least recently. A subject with an open
// connection is never dropped (its bucket would be reset while in use), so
// the table may exceed the bound by the subjects connected at the moment.
// subjects is safe for concurrent use.
type subjects struct {
	limit    rate.Limit
	burst    int
	limited  bool // false: PublishRate is negative, no publish limit
	maxConns int  // negative: no limit
	max      int

	mu sync.Mutex // guards m and its entries
	m  map[string]*subject
}

type subject struct {
	lim   *rate.Limiter // nil when !limited
	last  time.Time     // last publish or connection change
	conns int           // open WebSocket connections
}

// newSubjects returns the table for a publish rate (negative: no limit),
// burst and connection cap (negative: no limit), remembering at most max
// idle subjects.
func newSubjects(perSecond float64, burst, maxConns, max int) *subjects {
	return &subjects{limit: rate.Limit(perSecond), burst: burst, limited: perSecond >= 0, maxConns: maxConns, max: max,
		m: make(map[string]*subject)}
}

// get returns name's entry, creating it. s.mu must be held.
func (s *subjects) get(name string, now time.Time) *subject {
	e := s.m[name]
	if e == nil {
		if len(s.m) >= s.max {
			s.evict(now)
		}
		e = &subject{}
		if s.limited {
			e.lim = rate.NewLimiter(s.limit, s.burst)
		}
		s.m[name] = e
	}
	e.last = now
	return e
}

// allow takes one publish from name's bucket.
func (s *subjects) allow(name string, now time.Time) bool {
	if !s.limited {
		return true
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.get(name, now).lim.AllowN(now, 1)
}

// acquire counts one more connection of name, unless it already has
// maxConns; each true must be followed by one release.
func (s *subjects) acquire(name string, now time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.get(name, now)
	if s.maxConns >= 0 && e.conns >= s.maxConns {
		return false
	}
	e.conns++
	return true
}

// release counts one connection of name fewer.
func (s *subjects) release(name string, now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.m[name]
	if e == nil {
		return
	}
	e.conns--
	e.last = now
	if e.conns <= 0 && !s.limited {
		delete(s.m, name) // nothing left to remember
	}
}

// evict makes room among the subjects without a connection. s.mu must be
// held.
func (s *subjects) evict(now time.Time) {
	var refill time.Duration
	if s.limited && s.limit > 0 {
		refill = time.Duration(float64(s.burst) / float64(s.limit) * float64(time.Second))
	}
	var oldest string
	var at time.Time
	found := false
	for k, e := range s.m {
		if e.conns > 0 {
			continue
		}
		if now.Sub(e.last) >= refill {
			delete(s.m, k)
			continue
		}
		if !found || e.last.Before(at) {
			oldest, at, found = k, e.last, true
		}
	}
	if len(s.m) >= s.max && found {
		delete(s.m, oldest)
	}
}
