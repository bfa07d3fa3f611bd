package multihost

import (
	"fmt"
	"strconv"
	"strings"
	"sync"
)

// ledger counts what the publisher acked and what every subscriber got,
// from their stdout lines, per phase (the fault running when the publish
// was acked).
type ledger struct {
	mu     sync.Mutex
	phases []string
	phase  int
	acked  map[[2]int64]int // (channel, seq) -> phase, publishes that returned nil
	failed int              // publishes that returned an error (not expected anywhere)
	subs   map[string]*subLog
	ready  map[string]bool // processes that said "ready"
}

type subLog struct {
	got        map[[2]int64]int // (channel, seq) -> times received
	last       map[int64]int64  // channel -> highest seq so far
	outOfOrder []int            // per phase of the message
	recovered  [2]int           // resumes answered recovered:true, recovered:false
	gaps       int
}

func newLedger() *ledger {
	return &ledger{phases: []string{"steady"}, acked: map[[2]int64]int{}, subs: map[string]*subLog{}, ready: map[string]bool{}}
}

// setPhase starts a phase: publishes acked from now on count for it.
func (l *ledger) setPhase(name string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.phases = append(l.phases, name)
	l.phase = len(l.phases) - 1
}

func (l *ledger) sub(name string) *subLog {
	s := l.subs[name]
	if s == nil {
		s = &subLog{got: map[[2]int64]int{}, last: map[int64]int64{}}
		l.subs[name] = s
	}
	return s
}

// line takes one stdout line of process proc.
func (l *ledger) line(proc, line string) {
	f := strings.Fields(line)
	if len(f) == 0 {
		return
	}
	num := func(i int) int64 {
		if i >= len(f) {
			return -1
		}
		n, _ := strconv.ParseInt(f[i], 10, 64)
		return n
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	switch f[0] {
	case "ready":
		l.ready[proc] = true
	case "pub":
		if len(f) == 4 && f[3] == "ok" {
			l.acked[[2]int64{num(1), num(2)}] = l.phase
		} else {
			l.failed++
		}
	case "msg":
		if len(f) != 4 {
			return
		}
		s := l.sub(f[1])
		ch, seq := num(2), num(3)
		k := [2]int64{ch, seq}
		s.got[k]++
		if s.got[k] == 1 {
			if seq < s.last[ch] {
				for len(s.outOfOrder) <= l.phase {
					s.outOfOrder = append(s.outOfOrder, 0)
				}
				s.outOfOrder[l.phase]++
			}
			s.last[ch] = max(s.last[ch], seq)
		}
	case "recovered":
		if len(f) == 4 {
			s := l.sub(f[1])
			if f[3] == "true" {
				s.recovered[0]++
			} else {
				s.recovered[1]++
			}
		}
	case "gap":
		if len(f) >= 2 {
			l.sub(f[1]).gaps++
		}
	}
}

func (l *ledger) isReady(proc string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.ready[proc]
}

// missing is how many acked messages some subscriber has not received.
func (l *ledger) missing() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, s := range l.subs {
		for k := range l.acked {
			if s.got[k] == 0 {
				n++
			}
		}
	}
	return n
}

// count is one phase's account, summed over the subscribers.
type count struct {
	phase                  string
	published, subs        int // acked in the phase; subscribers
	expected, delivered    int // acked × subscribers; of those, received
	lost, dups, outOfOrder int
	recoveredT, recoveredF int // resumes (whole run, reported with the last phase)
	gaps, failedPublishes  int
}

// counts returns one count per phase, for the subscribers named.
func (l *ledger) counts(names []string) []count {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]count, len(l.phases))
	for i := range out {
		out[i].phase = l.phases[i]
		out[i].subs = len(names)
	}
	for _, ph := range l.acked {
		out[ph].published++
	}
	for _, n := range names {
		s := l.subs[n]
		if s == nil {
			s = &subLog{got: map[[2]int64]int{}}
		}
		for k, ph := range l.acked {
			out[ph].expected++
			switch g := s.got[k]; {
			case g == 0:
				out[ph].lost++
			default:
				out[ph].delivered++
				out[ph].dups += g - 1
			}
		}
		for ph, n := range s.outOfOrder {
			out[ph].outOfOrder += n
		}
		last := &out[len(out)-1]
		last.recoveredT += s.recovered[0]
		last.recoveredF += s.recovered[1]
		last.gaps += s.gaps
	}
	out[len(out)-1].failedPublishes = l.failed
	return out
}

func (c count) String() string {
	return fmt.Sprintf("| %s | %d | %d | %d | %d | %d | %d |", c.phase, c.published, c.subs, c.delivered, c.lost, c.dups, c.outOfOrder)
}
