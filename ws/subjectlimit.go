package ws

import (
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// maxLimitedSubjects bounds how many token subjects the HTTP publish limit
// remembers at once.
const maxLimitedSubjects = 10000

// subjectLimits is the HTTP publish limit: one token bucket per token
// subject, with the rate and burst a WebSocket connection has
// (Config.PublishRate, PublishBurst). Without it a token holder limited
// to PublishRate on a WebSocket could publish without limit by POSTing the
// same messages. API keys (backends) and an insecure gateway are not
// limited.
//
// The table is bounded: when it is full, subjects idle long enough for
// their bucket to have refilled are dropped (a new bucket is the same
// thing), then, if it is still full, the subject seen least recently.
type subjectLimits struct {
	limit rate.Limit
	burst int
	max   int

	mu sync.Mutex
	m  map[string]*subjectBucket
}

type subjectBucket struct {
	lim  *rate.Limiter
	last time.Time
}

// newSubjectLimits returns nil (no limit) for a negative rate.
func newSubjectLimits(perSecond float64, burst, max int) *subjectLimits {
	if perSecond < 0 {
		return nil
	}
	return &subjectLimits{limit: rate.Limit(perSecond), burst: burst, max: max, m: make(map[string]*subjectBucket)}
}

// allow takes one publish from subject's bucket, if there is one.
func (s *subjectLimits) allow(subject string, now time.Time) bool {
	if s == nil {
		return true
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	b := s.m[subject]
	if b == nil {
		if len(s.m) >= s.max {
			s.evict(now)
		}
		b = &subjectBucket{lim: rate.NewLimiter(s.limit, s.burst)}
		s.m[subject] = b
	}
	b.last = now
	return b.lim.AllowN(now, 1)
}

func (s *subjectLimits) evict(now time.Time) {
	refill := time.Duration(float64(s.burst) / float64(s.limit) * float64(time.Second))
	var oldest string
	var at time.Time
	found := false
	for k, b := range s.m {
		if now.Sub(b.last) >= refill {
			delete(s.m, k)
			continue
		}
		if !found || b.last.Before(at) {
			oldest, at, found = k, b.last, true
		}
	}
	if len(s.m) >= s.max {
		delete(s.m, oldest)
	}
}
