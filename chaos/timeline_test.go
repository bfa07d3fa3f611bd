package chaos

import (
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/pubmesh/pubmesh/discovery"
	"github.com/pubmesh/pubmesh/fanout"
)

// timeline records a fanout client's view of the cluster every 10 ms, so
// a scenario can say when the clients saw a fault (detect) and when
// everything was back (recover).
type timeline struct {
	c    *fanout.Client
	stop chan struct{}
	done chan struct{}

	mu    sync.Mutex
	snaps []stamped // one per change
}

type stamped struct {
	at time.Time
	s  discovery.Snapshot
}

func watchTimeline(c *fanout.Client) *timeline {
	tl := &timeline{c: c, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(tl.done)
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		var last discovery.Snapshot
		for first := true; ; first = false {
			s := c.Nodes()
			if first || !sameView(s, last) {
				tl.mu.Lock()
				tl.snaps = append(tl.snaps, stamped{at: time.Now(), s: s})
				tl.mu.Unlock()
				last = s
			}
			select {
			case <-tl.stop:
				return
			case <-tick.C:
			}
		}
	}()
	return tl
}

func sameView(a, b discovery.Snapshot) bool {
	if a.Stale != b.Stale || len(a.Nodes) != len(b.Nodes) {
		return false
	}
	for i := range a.Nodes {
		x, y := a.Nodes[i], b.Nodes[i]
		if x.ID != y.ID || x.State != y.State || x.Incarnation != y.Incarnation {
			return false
		}
	}
	return true
}

func (tl *timeline) close() {
	select {
	case <-tl.stop:
	default:
		close(tl.stop)
	}
	<-tl.done
}

// now is the latest view.
func (tl *timeline) now() discovery.Snapshot {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	return tl.snaps[len(tl.snaps)-1].s
}

// first returns when, at or after t, the view first satisfied pred.
func (tl *timeline) first(t time.Time, pred func(discovery.Snapshot) bool) (time.Time, bool) {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	// The view in force at t is the last one stamped before it.
	start := 0
	for i, s := range tl.snaps {
		if s.at.After(t) {
			break
		}
		start = i
	}
	for _, s := range tl.snaps[start:] {
		if pred(s.s) {
			return maxTime(s.at, t), true
		}
	}
	return time.Time{}, false
}

// wait waits up to within for pred and returns when it first held after t.
func (tl *timeline) wait(t time.Time, within time.Duration, pred func(discovery.Snapshot) bool) (time.Time, bool) {
	deadline := time.Now().Add(within)
	for {
		if at, ok := tl.first(t, pred); ok {
			return at, true
		}
		if time.Now().After(deadline) {
			return time.Time{}, false
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// staleSpans is how many times the view went stale after t, and for how
// long in total.
// readyChanges counts changes of the client's ready set after t (a node
// that left, joined, or registered again).
func (tl *timeline) readyChanges(t time.Time) int {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	n := 0
	var last []string
	for i, s := range tl.snaps {
		var ids []string
		for _, x := range s.s.Ready() {
			ids = append(ids, fmt.Sprint(x.ID, x.Incarnation))
		}
		if i > 0 && !s.at.Before(t) && !slices.Equal(ids, last) {
			n++
		}
		last = ids
	}
	return n
}

func (tl *timeline) staleSpans(t time.Time) (n int, total time.Duration) {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	var since time.Time
	for _, s := range tl.snaps {
		if s.at.Before(t) {
			continue
		}
		if s.s.Stale && since.IsZero() {
			n++
			since = s.at
		} else if !s.s.Stale && !since.IsZero() {
			total += s.at.Sub(since)
			since = time.Time{}
		}
	}
	if !since.IsZero() {
		total += time.Since(since)
	}
	return n, total
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// readyInc returns node id's incarnation if it is ready in s.
func readyInc(s discovery.Snapshot, id string) (int64, bool) {
	for _, n := range s.Nodes {
		if n.ID == id && n.State == discovery.StateReady {
			return n.Incarnation, true
		}
	}
	return 0, false
}

func stateOf(s discovery.Snapshot, id string) discovery.State {
	for _, n := range s.Nodes {
		if n.ID == id {
			return n.State
		}
	}
	return ""
}
