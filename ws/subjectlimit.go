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
//   - one publish token bucket (gateway.publish_rate, publish_burst),
//     shared by all the subject's WebSocket connections and its HTTP
//     publishes, so that N connections, or POSTs beside them, do not
//     multiply the rate;
//   - a count of its open WebSocket connections, capped at
//     gateway.max_connections_per_subject.
//
// API keys (backends) and an insecure gateway are not tracked here. The
// limits follow the cluster configuration: setLimits changes them, for the
// buckets that exist too.
//
// The table is bounded for subjects without an open connection: when it
// holds maxLimitedSubjects, those idle long enough for their bucket to have
// refilled are dropped (a new bucket is the same thing), then, if it is
// still full, the one seen least recently. A subject with an open
// connection is never dropped (its bucket would be reset while in use), so
// the table may exceed the bound by the subjects connected at the moment.
// subjects is safe for concurrent use.
type subjects struct {
	max int

	mu       sync.Mutex // guards the limits, m and its entries
	limit    rate.Limit
	burst    int
	limited  bool // false: the publish rate is negative, no publish limit
	maxConns int  // negative: no limit
	m        map[string]*subject
}

type subject struct {
	lim   *rate.Limiter // nil when !limited (never rate.Inf: see setLimits)
	last  time.Time     // last publish or connection change
	conns int           // open WebSocket connections
}

// newSubjects returns the table for a publish rate (negative: no limit),
// burst and connection cap (negative: no limit), remembering at most max
// idle subjects.
func newSubjects(perSecond float64, burst, maxConns, max int) *subjects {
	s := &subjects{max: max, m: make(map[string]*subject)}
	s.setLimits(perSecond, burst, maxConns, time.Now())
	return s
}

// setLimits changes the publish rate (negative: no limit), burst and
// connection cap (negative: no limit). The buckets that exist take the new
// rate and burst at once, keeping their tokens (at most the new burst);
// open connections stay, even above a lowered cap. An unlimited rate drops
// the buckets rather than using rate.Inf: a limiter moved from Inf to a
// finite rate can compute NaN tokens, which then allow everything.
func (s *subjects) setLimits(perSecond float64, burst, maxConns int, now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	limit, limited := rate.Limit(perSecond), perSecond >= 0
	changed := limit != s.limit || burst != s.burst || limited != s.limited
	s.limit, s.burst, s.limited, s.maxConns = limit, burst, limited, maxConns
	if !changed {
		return
	}
	for name, e := range s.m {
		switch {
		case !limited && e.conns <= 0:
			delete(s.m, name) // nothing left to remember
		case !limited:
			e.lim = nil
		case e.lim == nil:
			e.lim = rate.NewLimiter(limit, burst)
		default:
			setRate(e.lim, limit, burst, now)
		}
	}
}

// setRate gives lim a new rate and burst, if they differ, keeping its
// tokens.
func setRate(lim *rate.Limiter, limit rate.Limit, burst int, now time.Time) {
	if lim.Limit() != limit {
		lim.SetLimitAt(now, limit)
	}
	if lim.Burst() != burst {
		lim.SetBurstAt(now, burst)
	}
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
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.limited {
		return true
	}
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
