package chaos

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/pubmesh/pubmesh/fanout"
)

// params size a scenario run; paramsFor picks the short or full set.
type params struct {
	nodes      int           // node agents before the fault
	publishers int           // fanout clients publishing
	rate       int           // messages per second per publisher, over all channels
	channels   int           // channels c0..c<n-1>
	fanoutSubs int           // fanout clients subscribed to every channel
	wsSubs     int           // WebSocket clients subscribed to every channel
	pre, post  time.Duration // load before the fault, and after recovery
	stopFor    time.Duration // SIGSTOP (scenario 4)
	quorumFor  time.Duration // etcd without quorum (scenario 6)
	cutFor     time.Duration // link down (scenario 8)
	wsClients  int           // reconnecting WebSocket clients (scenario 9)

	// The agents' settings: full mode uses pubmesh node's defaults, so
	// the times to detect are the ones an operator gets.
	healthInterval time.Duration
	healthFailures int
	leaseTTL       time.Duration
}

func paramsFor() params {
	if full() {
		return params{
			nodes: 4, publishers: 2, rate: 200, channels: 8, fanoutSubs: 3, wsSubs: 20,
			pre: 3 * time.Second, post: 3 * time.Second,
			stopFor: 10 * time.Second, quorumFor: 20 * time.Second, cutFor: 10 * time.Second,
			wsClients:      1000,
			healthInterval: 200 * time.Millisecond, healthFailures: 3, leaseTTL: 5 * time.Second,
		}
	}
	return params{
		nodes: 3, publishers: 2, rate: 80, channels: 8, fanoutSubs: 2, wsSubs: 2,
		pre: time.Second, post: 1500 * time.Millisecond,
		stopFor: 3 * time.Second, quorumFor: 4 * time.Second, cutFor: 3 * time.Second,
		wsClients: 200,
		// Quicker than the defaults, but not so quick that a machine
		// loaded by the rest of make test (-race) makes nodes miss PINGs
		// or lose leases for nothing.
		healthInterval: 300 * time.Millisecond, healthFailures: 3, leaseTTL: 3 * time.Second,
	}
}

func channelName(i int) string { return "c" + strconv.Itoa(i) }

// pubRec is one publish: when Publish was called and returned (unix
// nanoseconds) and whether it returned nil.
type pubRec struct {
	start, end int64
	ok         bool
}

// publishers publish [p,c,s] to channel c at a fixed rate: one goroutine
// per publisher and channel, each sequential (so per-channel order is
// defined), ticking every channels/rate.
type publishers struct {
	t       *testing.T
	base    int // the payloads' first publisher number
	clients []*fanout.Client
	stop    chan struct{}
	wg      sync.WaitGroup

	mu      sync.Mutex
	recs    [][][]pubRec // [publisher][channel][seq]
	failed  int
	slowest time.Duration
	errs    []string // the first few errors
}

func startPublishers(t *testing.T, clients []*fanout.Client, channels, rate int) *publishers {
	return startPublishersAt(t, 0, clients, channels, rate)
}

// startPublishersAt is startPublishers with publisher numbers from base in
// the payloads, so that runs one after the other on the same subscribers
// never share message ids.
func startPublishersAt(t *testing.T, base int, clients []*fanout.Client, channels, rate int) *publishers {
	p := &publishers{t: t, base: base, clients: clients, stop: make(chan struct{})}
	p.recs = make([][][]pubRec, len(clients))
	interval := time.Duration(channels) * time.Second / time.Duration(rate)
	for pi, c := range clients {
		p.recs[pi] = make([][]pubRec, channels)
		for ci := range channels {
			p.wg.Add(1)
			go func() {
				defer p.wg.Done()
				// Spread the goroutines' ticks over the interval.
				time.Sleep(interval * time.Duration(pi*channels+ci) / time.Duration(len(clients)*channels))
				tick := time.NewTicker(interval)
				defer tick.Stop()
				ch := channelName(ci)
				for s := 0; ; s++ {
					select {
					case <-p.stop:
						return
					case <-tick.C:
					}
					ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
					t0 := time.Now()
					err := c.Publish(ctx, ch, fmt.Appendf(nil, "[%d,%d,%d]", base+pi, ci, s))
					t1 := time.Now()
					cancel()
					p.mu.Lock()
					p.recs[pi][ci] = append(p.recs[pi][ci], pubRec{start: t0.UnixNano(), end: t1.UnixNano(), ok: err == nil})
					p.slowest = max(p.slowest, t1.Sub(t0))
					if err != nil {
						p.failed++
						if len(p.errs) < 5 {
							p.errs = append(p.errs, err.Error())
						}
					}
					p.mu.Unlock()
				}
			}()
		}
	}
	return p
}

// finish stops publishing and waits for the goroutines.
func (p *publishers) finish() {
	close(p.stop)
	p.wg.Wait()
}

// published counts the publishes that returned nil.
func (p *publishers) published() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, byCh := range p.recs {
		for _, rs := range byCh {
			for _, r := range rs {
				if r.ok {
					n++
				}
			}
		}
	}
	return n
}

// recvRec is what one subscriber got of one message: how many times, and
// when first (unix nanoseconds).
type recvRec struct {
	n  int32
	at int64
}

// interval is a time a subscriber was subscribed to a channel: from the
// confirmation to the end (0: still subscribed).
type interval struct{ from, to int64 }

// sink counts what one subscriber receives. Safe for concurrent use.
type sink struct {
	name string

	mu         sync.Mutex
	recv       [][][]recvRec // [publisher][channel][seq]
	last       map[[2]int]int
	outOfOrder int
	total      int64
	bad        int          // payloads that did not parse
	subs       [][]interval // [channel]
}

func newSink(name string, publishers, channels int) *sink {
	k := &sink{name: name, last: map[[2]int]int{}, subs: make([][]interval, channels)}
	k.recv = make([][][]recvRec, publishers)
	for i := range k.recv {
		k.recv[i] = make([][]recvRec, channels)
	}
	return k
}

// subscribed records that channel c is subscribed from now on.
func (k *sink) subscribed(c int, at time.Time) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.subs[c] = append(k.subs[c], interval{from: at.UnixNano()})
}

// endBy ends every interval still open at t at t.
func (k *sink) endBy(t time.Time) {
	k.mu.Lock()
	defer k.mu.Unlock()
	for c := range k.subs {
		for i, iv := range k.subs[c] {
			if iv.from < t.UnixNano() && (iv.to == 0 || iv.to > t.UnixNano()) {
				k.subs[c][i].to = t.UnixNano()
			}
		}
	}
}

// unsubscribed ends every open interval (the connection was lost).
func (k *sink) unsubscribed(at time.Time) {
	k.mu.Lock()
	defer k.mu.Unlock()
	for c := range k.subs {
		if n := len(k.subs[c]); n > 0 && k.subs[c][n-1].to == 0 {
			k.subs[c][n-1].to = at.UnixNano()
		}
	}
}

// add records one received payload.
func (k *sink) add(payload []byte, at time.Time) {
	p, c, s, ok := parsePayload(payload)
	k.mu.Lock()
	defer k.mu.Unlock()
	k.total++
	if !ok || p >= len(k.recv) || c >= len(k.recv[p]) {
		k.bad++
		return
	}
	rs := k.recv[p][c]
	for len(rs) <= s {
		rs = append(rs, recvRec{})
	}
	if rs[s].n == 0 {
		rs[s].at = at.UnixNano()
	}
	rs[s].n++
	k.recv[p][c] = rs
	key := [2]int{p, c}
	if l, seen := k.last[key]; seen && s < l {
		k.outOfOrder++
	}
	k.last[key] = max(s, k.last[key])
}

func (k *sink) count() int64 {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.total
}

// parsePayload reads "[p,c,s]".
func parsePayload(b []byte) (p, c, s int, ok bool) {
	b = bytes.TrimSpace(b)
	if len(b) < 7 || b[0] != '[' || b[len(b)-1] != ']' {
		return 0, 0, 0, false
	}
	f := bytes.Split(b[1:len(b)-1], []byte(","))
	if len(f) != 3 {
		return 0, 0, 0, false
	}
	var v [3]int
	for i, x := range f {
		n, err := strconv.Atoi(string(x))
		if err != nil || n < 0 {
			return 0, 0, 0, false
		}
		v[i] = n
	}
	return v[0], v[1], v[2], true
}

// recorder is what a subscriber reports to: a sink, or a bitSink for long
// runs.
type recorder interface {
	add(payload []byte, at time.Time)
	subscribed(c int, at time.Time)
	unsubscribed(at time.Time)
	count() int64
}

// fanoutSink subscribes c to every channel and counts into a new sink.
func fanoutSink(t *testing.T, name string, c *fanout.Client, publishers, channels int) *sink {
	t.Helper()
	k := newSink(name, publishers, channels)
	fanoutRecord(t, c, channels, k)
	return k
}

// gapLog collects the Gap events of one subscription. Safe for concurrent
// use.
type gapLog struct {
	mu   sync.Mutex
	gaps []fanout.Gap
	at   []time.Time // when each event arrived
}

func (l *gapLog) all() ([]fanout.Gap, []time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.gaps), slices.Clone(l.at)
}

// fanoutSinkGaps is fanoutSink that also collects the subscription's Gap
// events.
func fanoutSinkGaps(t *testing.T, name string, c *fanout.Client, publishers, channels int) (*sink, *gapLog) {
	t.Helper()
	k := newSink(name, publishers, channels)
	s := fanoutRecord(t, c, channels, k)
	l := &gapLog{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for g := range s.Gaps() {
			l.mu.Lock()
			l.gaps = append(l.gaps, g)
			l.at = append(l.at, time.Now())
			l.mu.Unlock()
		}
	}()
	t.Cleanup(func() { s.Close(); <-done })
	return k, l
}

// fanoutRecord subscribes c to every channel and reports to k.
func fanoutRecord(t *testing.T, c *fanout.Client, channels int, k recorder) *fanout.Subscription {
	t.Helper()
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
	now := time.Now()
	for i := range channels {
		k.subscribed(i, now)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for m := range s.Messages() {
			k.add(m.Payload, time.Now())
		}
	}()
	t.Cleanup(func() { s.Close(); <-done })
	return s
}

// subResult is one subscriber's account of a run.
type subResult struct {
	name       string
	expected   int // published while it was subscribed
	received   int // distinct messages received
	lost       int // expected and not received
	dups       int // received more than once
	outOfOrder int
	lostAcked  []int64 // when the lost messages' publishes returned (unix ns)
	maxLatency time.Duration
	bound      int      // losses allowed: messages in flight at the fault (see inflightLoss); 0 unless the scenario is lossy
	holes      []string // lost messages that were not in flight at the fault (see inflightLoss)
}

// account compares what k received with what was published. A message is
// expected when its Publish returned nil, started after the subscription
// to its channel was confirmed and returned before that subscription ended.
// latencyBefore, if not zero, limits maxLatency to messages received
// before it.
func account(k *sink, p *publishers, latencyBefore time.Time) subResult {
	var r subResult
	eachStream(k, p, func(_, ci int, rs []pubRec, got func(seq int) recvRec) {
		for s, pr := range rs {
			g := got(s)
			if g.n > 0 {
				r.received++
				r.dups += int(g.n - 1)
				lat := time.Duration(g.at - pr.start)
				if latencyBefore.IsZero() || g.at < latencyBefore.UnixNano() {
					r.maxLatency = max(r.maxLatency, lat)
				}
			}
			if !pr.ok || !covered(k.subs[ci], pr) {
				continue
			}
			r.expected++
			if g.n == 0 {
				r.lost++
				r.lostAcked = append(r.lostAcked, pr.end)
			}
		}
	})
	k.mu.Lock()
	r.name, r.outOfOrder = k.name, k.outOfOrder
	k.mu.Unlock()
	return r
}

// eachStream calls fn, with p's and k's locks held, for every stream
// (publisher pi, channel ci): what was published on it, by sequence number,
// and what k received of each (zero if nothing).
func eachStream(k *sink, p *publishers, fn func(pi, ci int, rs []pubRec, got func(seq int) recvRec)) {
	p.mu.Lock()
	defer p.mu.Unlock()
	k.mu.Lock()
	defer k.mu.Unlock()
	for pi, byCh := range p.recs {
		for ci, rs := range byCh {
			var recv []recvRec
			if pi < len(k.recv) && ci < len(k.recv[pi]) {
				recv = k.recv[pi][ci]
			}
			fn(pi, ci, rs, func(seq int) recvRec {
				if seq < len(recv) {
					return recv[seq]
				}
				return recvRec{}
			})
		}
	}
}

func covered(ivs []interval, pr pubRec) bool {
	for _, iv := range ivs {
		if iv.from <= pr.start && (iv.to == 0 || pr.end <= iv.to) {
			return true
		}
	}
	return false
}

// quiesce waits until every sink has stopped receiving for a while (or
// has everything published), at most within.
func quiesce[R recorder](sinks []R, want int64, within time.Duration) {
	deadline := time.Now().Add(within)
	quiet := time.Now()
	last := int64(-1)
	for time.Now().Before(deadline) && time.Since(quiet) < 2*time.Second {
		var sum int64
		all := true
		for _, k := range sinks {
			n := k.count()
			sum += n
			all = all && n >= want
		}
		if all {
			// Everything is in; a little more for duplicates in flight.
			time.Sleep(200 * time.Millisecond)
			return
		}
		if sum != last {
			last, quiet = sum, time.Now()
		}
		time.Sleep(50 * time.Millisecond)
	}
}
