package chaos

import (
	"bufio"
	"context"
	"fmt"
	"math/bits"
	"net/http"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pubmesh/pubmesh/fanout"
)

// gwStats are a gateway process's numbers, from its /metrics and /proc.
type gwStats struct {
	goroutines int
	heapInuse  int64 // bytes
	rss        int64 // bytes
}

func (g *gateway) stats(t *testing.T) gwStats {
	t.Helper()
	cl := http.Client{Timeout: 10 * time.Second}
	resp, err := cl.Get("http://" + g.addr + "/metrics")
	if err != nil {
		t.Fatalf("gateway metrics: %v", err)
	}
	defer resp.Body.Close()
	var s gwStats
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		name, v, ok := strings.Cut(sc.Text(), " ")
		if !ok {
			continue
		}
		f, _ := strconv.ParseFloat(v, 64)
		switch name {
		case "go_goroutines":
			s.goroutines = int(f)
		case "go_memstats_heap_inuse_bytes":
			s.heapInuse = int64(f)
		}
	}
	s.rss = procStatus(g.proc().pid(), "VmRSS") << 10
	return s
}

// metric reads a counter or gauge (summed over its labels) from the
// gateway's /metrics.
func (g *gateway) metric(name string) float64 {
	cl := http.Client{Timeout: 10 * time.Second}
	resp, err := cl.Get("http://" + g.addr + "/metrics")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	sum := 0.0
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name) {
			continue
		}
		rest := line[len(name):]
		if rest == "" || (rest[0] != ' ' && rest[0] != '{') {
			continue
		}
		f := strings.Fields(rest)
		v, _ := strconv.ParseFloat(f[len(f)-1], 64)
		sum += v
	}
	return sum
}

func mib(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }

// TestLoadHeld10k: a gateway holds 10 000 connections (300 in the short
// version) subscribed to one channel, once over WebSocket and once over
// SSE (a fresh cluster and gateway each); one message published there
// reaches every one of them. It reports the gateway's memory per
// connection and the time to deliver one message to all, per transport.
func TestLoadHeld10k(t *testing.T) {
	n := 300
	if full() {
		n = 10000
	}
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	if lim.Max < uint64(n+1024) {
		t.Skipf("RLIMIT_NOFILE hard limit %d: %d connections need %d", lim.Max, n, n+1024)
	}
	lim.Cur = lim.Max // the gateway, a Go program, raises its own soft limit to the hard one
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	for _, tr := range heldTransports {
		t.Run(tr.name, func(t *testing.T) { loadHeld(t, n, tr) })
	}
}

func loadHeld(t *testing.T, n int, tr heldTransport) {
	p := paramsFor()
	c := newCluster(t, p, false)
	c.addNode("n1", nodeOpts{})
	c.addNode("n2", nodeOpts{})
	gw := c.startGateway()
	c.waitReady(within)
	gw.waitHealthy(within)
	pub := c.client(c.fanoutConfig(1))
	c.waitReady(within, pub)
	time.Sleep(time.Second)
	before := gw.stats(t)

	conns := make([]heldConn, n)
	t.Cleanup(func() {
		for _, hc := range conns {
			if hc != nil {
				hc.close()
			}
		}
	})
	t0 := time.Now()
	var wg sync.WaitGroup
	sem := make(chan struct{}, 64)
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			hc, err := tr.dial(gw, i)
			if err != nil {
				errs <- fmt.Errorf("connection %d: %v", i, err)
				return
			}
			conns[i] = hc
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	connected := time.Since(t0)
	time.Sleep(2 * time.Second)
	after := gw.stats(t)

	// Every connection reads; recv[k][i] is when connection i got message k.
	const messages = 3
	var recv [messages][]atomic.Int64
	for k := range recv {
		recv[k] = make([]atomic.Int64, n)
	}
	var readers sync.WaitGroup
	for i, hc := range conns {
		readers.Add(1)
		go func() {
			defer readers.Done()
			for got := 0; got < messages; {
				data, err := hc.next(time.Now().Add(3 * time.Minute))
				if err != nil {
					return
				}
				now := time.Now().UnixNano()
				if k, err := strconv.Atoi(string(data)); err == nil && k >= 0 && k < messages {
					recv[k][i].Store(now)
					got++
				}
			}
		}()
	}
	var took []time.Duration
	for k := range messages {
		start := time.Now()
		if err := pub.Publish(context.Background(), "all", []byte(strconv.Itoa(k))); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(2 * time.Minute)
		for {
			missing, last := 0, int64(0)
			for i := range recv[k] {
				v := recv[k][i].Load()
				if v == 0 {
					missing++
				}
				last = max(last, v)
			}
			if missing == 0 {
				took = append(took, time.Duration(last-start.UnixNano()))
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("message %d: %d of %d connections did not get it within 2m", k, missing, n)
			}
			time.Sleep(5 * time.Millisecond)
		}
		time.Sleep(time.Second)
	}
	for _, hc := range conns {
		hc.close()
	}
	readers.Wait()
	slices.Sort(took)
	rss := (after.rss - before.rss) / int64(n)
	heap := (after.heapInuse - before.heapInuse) / int64(n)
	recordLoad("%d %s on one gateway (`pubmesh gateway`, its own process), all subscribed to one channel: connected and subscribed in %s (64 dials at a time); "+
		"gateway RSS %s → %s (**%.1f KiB per connection**), heap in use %s → %s (%.1f KiB per connection), goroutines %d → %d; "+
		"one message to all %d connections: **%s** (median of %d; %s)",
		n, tr.label, connected.Round(10*time.Millisecond), mib(before.rss), mib(after.rss), float64(rss)/1024, mib(before.heapInuse), mib(after.heapInuse), float64(heap)/1024,
		before.goroutines, after.goroutines, n, took[len(took)/2].Round(time.Millisecond), len(took), durations(took))
	t.Logf("%d %s: RSS %+.1f KiB/conn, heap %+.1f KiB/conn, goroutines %d → %d, one message to all in %v",
		n, tr.label, float64(rss)/1024, float64(heap)/1024, before.goroutines, after.goroutines, took)
	if rss > 256<<10 {
		t.Errorf("gateway RSS grew %d KiB per connection", rss>>10)
	}
	if g := after.goroutines - before.goroutines; g > tr.goroutines*n+100 {
		t.Errorf("gateway goroutines grew by %d for %d connections", g, n)
	}
}

func durations(ds []time.Duration) string {
	var s []string
	for _, d := range ds {
		s = append(s, d.Round(time.Millisecond).String())
	}
	return strings.Join(s, ", ")
}

// bitSink counts what one subscriber receives in a long run: a bit per
// message. Safe for concurrent use.
type bitSink struct {
	chans    []int // the channels it is subscribed to; nil: all
	channels int

	mu         sync.Mutex
	bits       map[int][][]uint64 // publisher number -> [channel] bitset of seqs
	last       map[[2]int]int
	dups       int
	outOfOrder int
	bad        int
	total      int64
}

func newBitSink(channels int) *bitSink {
	return &bitSink{channels: channels, last: map[[2]int]int{}, bits: map[int][][]uint64{}}
}

func (k *bitSink) add(payload []byte, _ time.Time) {
	p, c, s, ok := parsePayload(payload)
	k.mu.Lock()
	defer k.mu.Unlock()
	k.total++
	if !ok || c >= k.channels {
		k.bad++
		return
	}
	if k.bits[p] == nil {
		k.bits[p] = make([][]uint64, k.channels)
	}
	b := k.bits[p][c]
	for len(b) <= s/64 {
		b = append(b, 0)
	}
	if b[s/64]&(1<<(s%64)) != 0 {
		k.dups++
	}
	b[s/64] |= 1 << (s % 64)
	k.bits[p][c] = b
	key := [2]int{p, c}
	if l, seen := k.last[key]; seen && s < l {
		k.outOfOrder++
	}
	k.last[key] = max(s, k.last[key])
}

func (k *bitSink) subscribed(int, time.Time) {}
func (k *bitSink) unsubscribed(time.Time)    {}

func (k *bitSink) count() int64 {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.total
}

// expected is how many of p's publishes the sink should have: those
// that returned nil, on its channels.
func (k *bitSink) expected(p *publishers) int {
	return k.count2(p, false)
}

// received is how many of p's publishes the sink got.
func (k *bitSink) received(p *publishers) int {
	return k.count2(p, true)
}

func (k *bitSink) count2(p *publishers, got bool) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	k.mu.Lock()
	defer k.mu.Unlock()
	n := 0
	for pi, byCh := range p.recs {
		for ci, rs := range byCh {
			if k.chans != nil && !slices.Contains(k.chans, ci) {
				continue
			}
			if !got {
				for _, r := range rs {
					if r.ok {
						n++
					}
				}
				continue
			}
			if b := k.bits[p.base+pi]; b != nil {
				for _, w := range b[ci] {
					n += bits.OnesCount64(w)
				}
			}
		}
	}
	return n
}

// snapshot is the memory and goroutines of every process of a run.
type snapshot struct {
	gw          gwStats
	agentsRSS   int64 // bytes, all agents
	redisMemory int64 // bytes, RSS of every node's redis-server
	goroutines  int   // this process (fanout clients, WebSocket clients)
	heap        int64 // this process, after a GC (includes the accounting)
}

func (c *cluster) snapshot(t *testing.T, nodes []*node) snapshot {
	var s snapshot
	s.gw = c.gw.stats(t)
	for _, n := range nodes {
		s.agentsRSS += procStatus(n.agentProc().pid(), "VmRSS") << 10
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if pid, err := n.redisPID(ctx); err == nil {
			s.redisMemory += procStatus(pid, "VmRSS") << 10
		}
		cancel()
	}
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	s.heap = int64(ms.HeapInuse)
	s.goroutines = runtime.NumGoroutine()
	return s
}

// TestSoak (full mode only): the cluster under load for 5 minutes at half
// of the rate it sustains at most; nothing is lost, and the memory and
// goroutines of the gateway, the agents, the redis-servers and the clients
// are the same at the end as at the start (within a sane bound).
func TestSoak(t *testing.T) {
	if !full() {
		t.Skip("the soak runs in full mode only (PUBMESH_CHAOS=full, make chaos)")
	}
	const (
		publishers = 4
		channels   = 32
		fanoutSubs = 3
		wsSubs     = 40
	)
	soakFor := 5 * time.Minute
	if d, err := time.ParseDuration(os.Getenv("PUBMESH_CHAOS_SOAK")); err == nil && d > 0 {
		soakFor = d // for trying the soak out; make chaos runs the 5 minutes
	}
	p := paramsFor()
	c := newCluster(t, p, false)
	fanoutMetrics := prometheus.NewRegistry() // the test's fanout clients, labelled by client
	var nodes []*node
	for i := range 3 {
		nodes = append(nodes, c.addNode(fmt.Sprintf("n%d", i+1), nodeOpts{}))
	}
	gw := c.startGateway()
	c.waitReady(within)
	gw.waitHealthy(within)
	var pubClients []*fanout.Client
	for range publishers {
		cfg := c.fanoutConfig(1)
		cfg.Registerer = prometheus.WrapRegistererWith(prometheus.Labels{"client": fmt.Sprint("pub", len(pubClients))}, fanoutMetrics)
		pubClients = append(pubClients, c.client(cfg))
	}
	var sinks []*bitSink
	for range fanoutSubs {
		cfg := c.fanoutConfig(1)
		cfg.Registerer = prometheus.WrapRegistererWith(prometheus.Labels{"client": fmt.Sprint("sub", len(sinks))}, fanoutMetrics)
		fc := c.client(cfg)
		c.waitReady(within, fc)
		k := newBitSink(channels)
		fanoutRecord(t, fc, channels, k)
		sinks = append(sinks, k)
	}
	// Each WebSocket client follows 4 channels, as a browser follows a few
	// feeds (every channel has wsSubs*4/channels of them).
	var wss []*rclient
	for i := range wsSubs {
		var mine []int
		for j := range 4 {
			mine = append(mine, (i*4+j)%channels)
		}
		k := newBitSink(channels)
		k.chans = mine
		rc := newRClient(gw.url(), mine, k)
		go rc.run()
		t.Cleanup(rc.close)
		wss = append(wss, rc)
		sinks = append(sinks, k)
	}
	waitUntil(t, within, "the WebSocket subscribers", func() bool {
		for _, rc := range wss {
			if !rc.subscribedNow() {
				return false
			}
		}
		return true
	})
	c.waitReady(within, pubClients...)
	// The agents' health checks (200 ms PINGs by default, 3 misses) and the
	// clients' down reports must not take a node out under full load: the
	// ready set stays as it is from here to the end.
	tl := watchTimeline(pubClients[0])
	t.Cleanup(tl.close)
	loadFrom := time.Now()

	maxRate := measureMaxRate(t, pubClients, sinks, wss, channels)
	if maxRate == 0 {
		t.Fatal("the setup does not keep up with 1000 msg/s")
	}
	connectsBefore := 0
	for _, rc := range wss {
		rc.mu.Lock()
		connectsBefore += rc.connects
		rc.mu.Unlock()
	}
	rate := maxRate / 2
	perPub := max(rate/publishers, 1)
	t.Logf("maximum rate %d msg/s; soaking at %d msg/s for %s", maxRate, perPub*publishers, soakFor)

	pubs := startPublishers(t, pubClients, channels, perPub)
	time.Sleep(30 * time.Second) // warm up
	start := c.snapshot(t, nodes)
	startAt := time.Now()
	time.Sleep(soakFor)
	end := c.snapshot(t, nodes)
	pubs.finish()
	published := pubs.published()
	for _, k := range sinks {
		deadline := time.Now().Add(2 * time.Minute)
		for k.received(pubs) < k.expected(pubs) && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
	}
	elapsed := time.Since(startAt)

	lost, dups, ooo := 0, 0, 0
	for _, k := range sinks {
		lost += k.expected(pubs) - k.received(pubs)
		k.mu.Lock()
		dups += k.dups
		ooo += k.outOfOrder
		k.mu.Unlock()
	}
	reconnects := -connectsBefore
	for _, rc := range wss {
		rc.mu.Lock()
		reconnects += rc.connects
		rc.mu.Unlock()
	}
	pubs.mu.Lock()
	failed := pubs.failed
	pubs.mu.Unlock()
	removals := tl.readyChanges(loadFrom)
	recordLoad("soak: %d messages published over %s at %d msg/s (half of the %d msg/s measured as the maximum with this setup: %d publishers, %d channels, %d fanout subscribers on every channel and %d WebSocket clients on 4 channels each, 3 nodes), "+
		"%d failed; lost %d, duplicated %d, out of order %d over all subscribers; WebSocket reconnects %d; changes of the ready set (a node taken out) %d over the maximum-rate runs and the soak, agents with --health-interval %s --health-failures %d. From the start (after 30 s of warm-up) to the end: "+
		"gateway goroutines %d → %d, heap in use %s → %s, RSS %s → %s; agents' RSS %s → %s; redis-servers' RSS %s → %s; test process (clients) goroutines %d → %d",
		published, (soakFor + 30*time.Second).Round(time.Second), perPub*publishers, maxRate, publishers, channels, fanoutSubs, wsSubs,
		failed, lost, dups, ooo, reconnects, removals, p.healthInterval, p.healthFailures,
		start.gw.goroutines, end.gw.goroutines, mib(start.gw.heapInuse), mib(end.gw.heapInuse), mib(start.gw.rss), mib(end.gw.rss),
		mib(start.agentsRSS), mib(end.agentsRSS), mib(start.redisMemory), mib(end.redisMemory), start.goroutines, end.goroutines)
	t.Logf("soak over %s: published %d, failed %d, lost %d, dups %d, out of order %d, reconnects %d; start %+v end %+v",
		elapsed.Round(time.Second), published, failed, lost, dups, ooo, reconnects, start, end)
	for i, k := range sinks {
		if k.outOfOrder > 0 || k.dups > 0 {
			t.Logf("subscriber %d (fanout: %v): out of order %d, dups %d", i, i < fanoutSubs, k.outOfOrder, k.dups)
		}
	}
	t.Logf("the test's fanout clients: retries %v, reorder holds %v, reorder gaps %v, out of order %v, duplicates dropped %v, publish errors %v",
		metric(fanoutMetrics, "pubmesh_fanout_publish_retries_total"), metric(fanoutMetrics, "pubmesh_fanout_reorder_holds_total"),
		metric(fanoutMetrics, "pubmesh_fanout_reorder_gaps_total"), metric(fanoutMetrics, "pubmesh_fanout_out_of_order_total"),
		metric(fanoutMetrics, "pubmesh_fanout_duplicates_dropped_total"), metric(fanoutMetrics, "pubmesh_fanout_publish_errors_total"))
	t.Logf("the gateway's fanout client: reorder holds %v, reorder gaps %v, out of order %v, duplicates dropped %v",
		gw.metric("pubmesh_fanout_reorder_holds_total"), gw.metric("pubmesh_fanout_reorder_gaps_total"),
		gw.metric("pubmesh_fanout_out_of_order_total"), gw.metric("pubmesh_fanout_duplicates_dropped_total"))

	if removals > 0 {
		t.Errorf("soak: the ready set changed %d times under load with no fault (a node taken out by its health checks or by down reports)", removals)
	}
	if failed > 0 || lost > 0 || dups > 0 || ooo > 0 || reconnects > 0 {
		t.Errorf("soak: failed %d, lost %d, duplicated %d, out of order %d, reconnects %d", failed, lost, dups, ooo, reconnects)
	}
	// Flat: goroutines within 10% + 20, memory within 50% + 32 MiB.
	flat := func(what string, a, b int64) {
		if b > a+a/2+32<<20 {
			t.Errorf("%s grew from %s to %s over the soak", what, mib(a), mib(b))
		}
	}
	flat("gateway heap in use", start.gw.heapInuse, end.gw.heapInuse)
	flat("gateway RSS", start.gw.rss, end.gw.rss)
	flat("agents' RSS", start.agentsRSS, end.agentsRSS)
	flat("redis-servers' RSS", start.redisMemory, end.redisMemory)
	if end.gw.goroutines > start.gw.goroutines+start.gw.goroutines/10+20 {
		t.Errorf("gateway goroutines grew from %d to %d", start.gw.goroutines, end.gw.goroutines)
	}
	if end.goroutines > start.goroutines+start.goroutines/10+20 {
		t.Errorf("test process goroutines grew from %d to %d", start.goroutines, end.goroutines)
	}
}

// measureMaxRate finds the highest publish rate the setup sustains: open
// loop steps of 10 s, from 1000 msg/s doubling (then one step between the
// last that passed and the first that failed). A step counts if no publish
// failed, every subscriber got every message within 3 s of the step's end,
// and no WebSocket client had to reconnect; the steps stop when one does
// not count, or when the publishers reach less than 90% of the offered rate
// (they are saturated). It returns the highest rate published in a step
// that counted, and leaves the sinks empty.
func measureMaxRate(t *testing.T, pubs []*fanout.Client, sinks []*bitSink, wss []*rclient, channels int) int {
	t.Helper()
	connects := func() int {
		n := 0
		for _, rc := range wss {
			rc.mu.Lock()
			n += rc.connects
			rc.mu.Unlock()
		}
		return n
	}
	const stepFor = 10 * time.Second
	best, steps := 0, 0
	step := func(rate int) bool {
		// The WebSocket clients a failed step disconnected must be back.
		waitUntil(t, within, "the WebSocket subscribers to be back", func() bool {
			for _, rc := range wss {
				if !rc.subscribedNow() {
					return false
				}
			}
			return true
		})
		time.Sleep(2 * time.Second) // and the previous step drained
		for _, k := range sinks {
			k.reset()
		}
		before := connects()
		perPub := rate / len(pubs)
		steps++
		p := startPublishersAt(t, 1000*steps, pubs, channels, perPub) // ids of its own
		time.Sleep(stepFor)
		p.finish()
		published := p.published()
		p.mu.Lock()
		failed, slowest := p.failed, p.slowest
		p.mu.Unlock()
		deadline := time.Now().Add(3 * time.Second)
		kept := true
		for _, k := range sinks {
			for k.received(p) < k.expected(p) && time.Now().Before(deadline) {
				time.Sleep(20 * time.Millisecond)
			}
			kept = kept && k.received(p) >= k.expected(p)
		}
		reached := float64(published) / stepFor.Seconds() / float64(perPub*len(pubs))
		t.Logf("max rate: %d msg/s offered, %.0f%% published (slowest publish %s), %d failed, every subscriber kept up: %v, reconnects %d",
			perPub*len(pubs), 100*reached, slowest.Round(time.Millisecond), failed, kept, connects()-before)
		if failed > 0 || !kept || connects() != before {
			return false // the cluster did not keep up
		}
		best = max(best, published*int(time.Second)/int(stepFor))
		return reached >= 0.9 // below, the publishers are what is saturated
	}
	rate := 1000
	for rate <= 128000 && step(rate) {
		rate *= 2
	}
	if best >= rate/2 && rate <= 128000 {
		step(rate * 3 / 4) // between the last that passed and the first that failed
	}
	waitUntil(t, within, "the WebSocket subscribers to be back", func() bool {
		for _, rc := range wss {
			if !rc.subscribedNow() {
				return false
			}
		}
		return true
	})
	time.Sleep(2 * time.Second) // let the last step drain before the sinks start over
	for _, k := range sinks {
		k.reset()
	}
	return best
}

// reset empties the sink.
func (k *bitSink) reset() {
	k.mu.Lock()
	defer k.mu.Unlock()
	clear(k.bits)
	clear(k.last)
	k.dups, k.outOfOrder, k.bad, k.total = 0, 0, 0, 0
}
