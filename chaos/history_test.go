package chaos

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/pubmesh/pubmesh/fanout"
)

// historyConfig switches history on for the suite's channels (c0…c7), in
// every scenario: the publishes go through the history path, and each
// scenario checks a recovery across its fault (historyWatch).
const historyConfig = `namespaces: [{match: "c*", history_size: 100000, history_ttl: 10m}]`

// historyWatch is a fanout subscriber that remembers, per channel, the
// position of the last message it got and, per stream, the last seq: at
// the fault it takes a checkpoint, and after the run it recovers every
// channel from there and checks the result against what the publishers
// had acknowledged (docs/history.md: exactly once, per-publisher order, and
// recovered:false whenever anything acknowledged is missing).
type historyWatch struct {
	c *fanout.Client

	mu      sync.Mutex
	pos     map[string]string // channel -> position of the last message
	lastS   map[[2]int]int    // (publisher, channel) -> last seq received
	cpPos   map[string]string
	cpLastS map[[2]int]int
}

func newHistoryWatch(t *testing.T, c *fanout.Client, channels int) *historyWatch {
	t.Helper()
	w := &historyWatch{c: c, pos: map[string]string{}, lastS: map[[2]int]int{}}
	var names []string
	for i := range channels {
		names = append(names, channelName(i))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s, err := c.Subscribe(ctx, names...)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for m := range s.Messages() {
			p, ch, seq, ok := parsePayload(m.Payload)
			w.mu.Lock()
			if ok {
				k := [2]int{p, ch}
				if l, seen := w.lastS[k]; !seen || seq > l {
					w.lastS[k] = seq
				}
			}
			if m.Position() != "" {
				w.pos[m.Channel] = m.Position()
			}
			w.mu.Unlock()
		}
	}()
	t.Cleanup(func() { s.Close(); <-done })
	return w
}

// checkpoint remembers where the watch is now, once it has a position on
// every channel (on a slow machine the load may not have reached them all
// by the end of the scenario's warm-up).
func (w *historyWatch) checkpoint(t *testing.T, channels int) {
	t.Helper()
	waitUntil(t, within, "the history watch to have a position on every channel", func() bool {
		w.mu.Lock()
		defer w.mu.Unlock()
		return len(w.pos) == channels
	})
	w.mu.Lock()
	defer w.mu.Unlock()
	w.cpPos, w.cpLastS = map[string]string{}, map[[2]int]int{}
	for k, v := range w.pos {
		w.cpPos[k] = v
	}
	for k, v := range w.lastS {
		w.cpLastS[k] = v
	}
}

// historyResult is a recovery of every channel from the checkpoint.
type historyResult struct {
	channels, recovered int
	expected, got       int // acknowledged after the checkpoint; recovered messages
	missing, dups       int // in recovered channels only: acknowledged but absent; twice or already covered
	outOfOrder          int
	silent              []string // a channel said recovered:true but lacks an acknowledged message
}

// verify recovers every channel from the checkpoint and compares with
// the publishers' acknowledged messages.
func (w *historyWatch) verify(t *testing.T, pubs *publishers, channels int) historyResult {
	t.Helper()
	w.mu.Lock()
	cpPos, cpLastS := w.cpPos, w.cpLastS
	w.mu.Unlock()
	var res historyResult
	pubs.mu.Lock()
	defer pubs.mu.Unlock()
	for ci := range channels {
		ch := channelName(ci)
		since, ok := cpPos[ch]
		if !ok {
			t.Errorf("history: no position on %s at the checkpoint", ch)
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		h, err := w.c.History(ctx, ch, fanout.HistoryOptions{Since: since})
		cancel()
		if err != nil {
			t.Errorf("history of %s: %v", ch, err)
			continue
		}
		res.channels++
		if h.Recovered {
			res.recovered++
		}
		seen := map[[2]int]bool{}
		last := map[int]int{}
		for _, m := range h.Messages {
			p, c, s, ok := parsePayload(m.Payload)
			if !ok || c != ci {
				t.Errorf("history of %s: foreign message %q", ch, m.Payload)
				continue
			}
			res.got++
			if seen[[2]int{p, s}] {
				res.dups++
			}
			seen[[2]int{p, s}] = true
			if l, ok := cpLastS[[2]int{p, c}]; ok && s <= l {
				res.dups++ // covered by the position: a duplicate for the subscriber
			}
			if l, ok := last[p]; ok && s < l {
				res.outOfOrder++
			}
			last[p] = s
		}
		for pi := range pubs.recs {
			from := 0
			if l, ok := cpLastS[[2]int{pubs.base + pi, ci}]; ok {
				from = l + 1
			}
			for s := from; s < len(pubs.recs[pi][ci]); s++ {
				if !pubs.recs[pi][ci][s].ok {
					continue
				}
				res.expected++
				if !seen[[2]int{pubs.base + pi, s}] {
					if h.Recovered {
						res.missing++
						if len(res.silent) < 5 {
							res.silent = append(res.silent, fmt.Sprintf("%s [%d,%d,%d]", ch, pubs.base+pi, ci, s))
						}
					}
				}
			}
		}
	}
	return res
}

func (r historyResult) String() string {
	return fmt.Sprintf("history from the fault: %d/%d channels recovered, %d of %d acknowledged messages recovered, %d dup, %d out of order",
		r.recovered, r.channels, r.got, r.expected, r.dups, r.outOfOrder)
}
