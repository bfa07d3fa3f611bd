package chaos

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pubmesh/pubmesh/discovery"
	"github.com/pubmesh/pubmesh/fanout"
	"github.com/pubmesh/pubmesh/internal/netns"
	"github.com/pubmesh/pubmesh/internal/tcpproxy"
	"github.com/pubmesh/pubmesh/pubmeshtest"
)

// scenario is one fault, injected into a cluster under load.
type scenario struct {
	num      int
	name     string
	replicas int
	// ownEtcd: the scenario kills etcd members, so it needs an etcd
	// cluster of its own.
	ownEtcd bool
	// lossy: the fault may lose what was in flight on the faulted node
	// (3, 4, 5, 8 with Replicas: 1); the bound is computed per subscriber
	// (see inflightLoss).
	lossy bool
	// node1 says how the faulted node n1 runs (default: a plain agent).
	node1 func(t *testing.T) nodeOpts
	// event injects the fault, waits for the recovery, and says when
	// things happened.
	event func(r *run) marks
	// cutSub: the first fanout subscriber reaches etcd through a proxy of
	// its own (run.etcdLink), which the event cuts: a client partitioned
	// from etcd but not from Redis. Its losses must lie inside the gaps it
	// reports (fanout.Gap), and it must report one.
	cutSub bool
	// runner, if set, runs the whole scenario instead of runScenario.
	runner func(t *testing.T, sc scenario)
	// sigkill: the gateway restart (9) kills the gateway instead of a
	// SIGTERM.
	sigkill bool
}

// marks are the times of one scenario run.
type marks struct {
	fault   time.Time // the fault was injected
	end     time.Time // the fault ended (SIGCONT, link up, members back); zero: same as fault
	detect  time.Time // the clients saw it; zero: not applicable
	recover time.Time // everything was back to normal; zero: not applicable
	note    string
}

// run is one scenario's cluster and load.
type run struct {
	t     *testing.T
	p     params
	sc    scenario
	c     *cluster
	gw    *gateway
	nodes []*node
	wss   []*rclient // the WebSocket subscribers
	pubs  *publishers
	obs   *timeline
	// etcdLink and gaps: the cut subscriber's path to etcd and its Gap
	// events (scenario.cutSub).
	etcdLink *tcpproxy.Proxy
	gaps     *gapLog
	cutID    string // the cut subscriber's client id
}

// within bounds every wait of a scenario: generous, the machine is shared.
const within = 90 * time.Second

// slowestPublish bounds one Publish in every scenario: the fanout client
// gives up on a node after its PublishTimeout (1 s) and tries the next.
const slowestPublish = time.Second + 1500*time.Millisecond

func scenarios() []scenario {
	var out []scenario
	add := func(s scenario) { out = append(out, s) }
	add(scenario{num: 1, name: "node joins", replicas: 1, event: joinNode})
	add(scenario{num: 2, name: "node drains", replicas: 1, event: drainNode})
	for _, rep := range []int{1, 2} {
		add(scenario{num: 3, name: "redis-server kill -9", replicas: rep, lossy: rep == 1, event: killRedis})
		add(scenario{num: 4, name: "redis-server SIGSTOP, SIGCONT", replicas: rep, lossy: rep == 1, event: stopRedis})
		add(scenario{num: 5, name: "agent kill -9, Redis lives on", replicas: rep, lossy: rep == 1, event: killAgent,
			node1: func(*testing.T) nodeOpts { return nodeOpts{attach: true} }})
	}
	add(scenario{num: 6, name: "etcd loses quorum", replicas: 1, ownEtcd: true, event: loseQuorum})
	add(scenario{num: 7, name: "etcd member restarted", replicas: 1, ownEtcd: true, event: restartMember})
	for _, rep := range []int{1, 2} {
		add(scenario{num: 8, name: "network partition", replicas: rep, lossy: rep == 1, event: partition,
			node1: func(t *testing.T) nodeOpts {
				if err := netns.Available(); err != nil {
					t.Skipf("scenario 8 skipped: %v", err)
				}
				ns, err := netns.New()
				if err != nil {
					t.Skipf("scenario 8 skipped: cannot make a network namespace: %v", err)
				}
				t.Cleanup(func() {
					if err := ns.Close(); err != nil {
						t.Errorf("network namespace cleanup: %v", err)
					}
				})
				return nodeOpts{attach: true, ns: ns}
			}})
	}
	add(scenario{num: 9, name: "gateway restarted under WebSocket clients", replicas: 1, runner: runGatewayRestart})
	add(scenario{num: 9, name: "gateway kill -9 under WebSocket clients", replicas: 1, sigkill: true, runner: runGatewayRestart})
	add(scenario{num: 10, name: "rolling restart of every node", replicas: 1, event: rollingRestart})
	add(scenario{num: 11, name: "node key deleted by hand", replicas: 1, event: deleteNodeKey})
	add(scenario{num: 12, name: "a subscriber cut off from etcd while a node joins", replicas: 1, cutSub: true, event: cutSubscriberFromEtcd})
	add(scenario{num: 13, name: "cluster configuration changed under load", replicas: 1, event: changeConfig})
	for _, rep := range []int{1, 2} {
		add(scenario{num: 14, name: "agent kill -9 with its Redis", replicas: rep, lossy: rep == 1, event: killAgentAndRedis})
	}
	slices.SortStableFunc(out, func(a, b scenario) int { return a.num - b.num })
	return out
}

// TestScenarios runs every scenario under load and checks the accounting.
func TestScenarios(t *testing.T) {
	t.Run("group", func(t *testing.T) {
		for _, sc := range scenarios() {
			t.Run(fmt.Sprintf("%d %s, replicas %d", sc.num, sc.name, sc.replicas), func(t *testing.T) {
				t.Parallel()
				if sc.runner != nil {
					sc.runner(t, sc)
					return
				}
				runScenario(t, sc)
			})
		}
	})
	printTable(t)
}

func runScenario(t *testing.T, sc scenario) {
	p := paramsFor()
	c := newCluster(t, p, sc.ownEtcd)
	pubmeshtest.ApplyConfig(t, c.reg, historyConfig)
	r := &run{t: t, p: p, sc: sc, c: c}
	for i := range p.nodes {
		var o nodeOpts
		if i == 0 && sc.node1 != nil {
			o = sc.node1(t)
		}
		r.nodes = append(r.nodes, c.addNode(fmt.Sprintf("n%d", i+1), o))
	}
	r.gw = c.startGateway()
	c.waitReady(within)
	r.gw.waitHealthy(within)

	var pubClients []*fanout.Client
	for range p.publishers {
		pubClients = append(pubClients, c.client(c.fanoutConfig(sc.replicas)))
	}
	var sinks []*sink
	var subClients []*fanout.Client
	for i := range p.fanoutSubs {
		cfg := c.fanoutConfig(1)
		if sc.cutSub && i == 0 {
			r.etcdLink = tcpproxy.New(t, strings.TrimPrefix(c.etcd.Endpoints()[0], "http://"))
			cfg.EtcdClient = nil
			cfg.Etcd = discovery.EtcdConfig{Endpoints: []string{"http://" + r.etcdLink.Addr()}}
			cfg.LeaseTTL = p.leaseTTL
		}
		fc := c.client(cfg)
		subClients = append(subClients, fc)
		c.waitReady(within, fc)
		if sc.cutSub && i == 0 {
			r.cutID = fc.ID()
			k, gaps := fanoutSinkGaps(t, "fanout0 (cut from etcd)", fc, p.publishers, p.channels)
			sinks, r.gaps = append(sinks, k), gaps
			continue
		}
		sinks = append(sinks, fanoutSink(t, fmt.Sprintf("fanout%d", i), fc, p.publishers, p.channels))
	}
	var wss []*rclient
	all := make([]int, p.channels)
	for i := range all {
		all[i] = i
	}
	for i := range p.wsSubs {
		k := newSink(fmt.Sprintf("ws%d", i), p.publishers, p.channels)
		rc := newRClient(r.gw.url(), all, k).withResume()
		go rc.run()
		t.Cleanup(rc.close)
		wss = append(wss, rc)
		sinks = append(sinks, k)
	}
	r.wss = wss
	waitUntil(t, within, "the WebSocket subscribers to subscribe", func() bool {
		for _, rc := range wss {
			if !rc.subscribedNow() {
				return false
			}
		}
		return true
	})
	hw := c.client(c.fanoutConfig(1))
	c.waitReady(within, hw)
	hist := newHistoryWatch(t, hw, p.channels)
	c.waitReady(within, pubClients...)
	r.obs = watchTimeline(pubClients[0])
	t.Cleanup(r.obs.close)

	r.pubs = startPublishers(t, pubClients, p.channels, p.rate)
	time.Sleep(p.pre)
	hist.checkpoint(t, p.channels)
	m := sc.event(r)
	if t.Failed() {
		r.pubs.finish()
		return
	}
	time.Sleep(p.post)
	r.pubs.finish()
	published := r.pubs.published()
	quiesce(sinks, int64(published), 60*time.Second)

	res := row{num: sc.num, name: sc.name, replicas: sc.replicas, published: published,
		fanoutSubs: p.fanoutSubs, wsSubs: p.wsSubs, note: m.note}
	r.pubs.mu.Lock()
	res.failed, res.slowest = r.pubs.failed, r.pubs.slowest
	pubErrs := slices.Clone(r.pubs.errs)
	r.pubs.mu.Unlock()
	res.detect, res.recover = -1, -1
	if !m.detect.IsZero() {
		res.detect = m.detect.Sub(m.fault)
	}
	end := m.end
	if end.IsZero() {
		end = m.fault
	}
	if !m.recover.IsZero() {
		res.recover = m.recover.Sub(end)
	}
	for _, k := range sinks {
		sr := account(k, r.pubs, m.fault)
		if sc.lossy {
			sr.bound, sr.holes = inflightLoss(k, r.pubs, func(interval) int64 { return m.fault.UnixNano() })
		}
		if sc.cutSub && r.gaps != nil && strings.HasPrefix(k.name, "fanout0") {
			gaps, _ := r.gaps.all()
			sr.bound, sr.holes = lossInGaps(k, r.pubs, gaps)
		}
		res.subs = append(res.subs, sr)
	}
	hr := hist.verify(t, r.pubs, p.channels)
	res.history = &hr
	record(res)
	t.Log(summarize(res))
	t.Log(hr)

	// History across the fault (docs/history.md): never a silent gap, no
	// duplicate, per-publisher order; and every channel recovered unless
	// the fault may lose messages (a crash or a partition with Replicas 1).
	if hr.missing > 0 {
		t.Errorf("history said recovered:true but lacks %d acknowledged messages (a silent gap): %v", hr.missing, hr.silent)
	}
	if hr.dups > 0 || hr.outOfOrder > 0 {
		t.Errorf("history recovery: %d duplicates, %d out of order", hr.dups, hr.outOfOrder)
	}
	if !sc.lossy && hr.recovered != hr.channels {
		t.Errorf("history: %d of %d channels recovered across a fault that loses nothing", hr.recovered, hr.channels)
	}

	// The assertions: see docs/reliability.md.
	if min := p.rate * p.publishers; published < min {
		t.Errorf("only %d messages published (want at least %d)", published, min)
	}
	if res.failed > 0 {
		t.Errorf("%d publishes failed: %v", res.failed, pubErrs)
	}
	// A publish gives up on a faulted node after PublishTimeout (1 s by
	// default) and then succeeds on the next one; 1.5 s more for the
	// machine. That is what the table reports; the assertion only checks
	// that no publish hangs, as the machine is shared: at a load average
	// of 17 a partition's publishes took up to 5 s (short run, -race), and
	// at 19 an etcd outage's 3.8 s (full run), although none failed.
	// fanout's TestPublishTimeoutBoundsAttempt checks the bound itself.
	bound := 4 * slowestPublish
	if res.slowest > bound {
		t.Errorf("slowest publish took %s, want at most %s", res.slowest.Round(time.Millisecond), bound)
	}
	for _, s := range res.subs {
		if s.lost > s.bound || len(s.holes) > 0 {
			t.Errorf("%s lost %d of %d messages, %d in flight at the fault (lost ones acked at %v); not in flight: %v",
				s.name, s.lost, s.expected, s.bound, relTimes(s.lostAcked, m.fault), firstFew(s.holes))
		}
		if s.dups > 0 {
			t.Errorf("%s got %d duplicates", s.name, s.dups)
		}
		if s.outOfOrder > 0 {
			t.Errorf("%s got %d messages out of order", s.name, s.outOfOrder)
		}
	}
}

// lossInGaps checks that every message subscriber k lost was published
// while one of its reported gaps was open (from Start to End, or to now if
// it has not ended): a client cut off from etcd may miss messages homed on
// a node that joined meanwhile, and must say so; a loss it did not report
// is a silent gap. It returns how many were published while a gap was open
// (the allowance) and a line per loss outside every gap.
func lossInGaps(k *sink, p *publishers, gaps []fanout.Gap) (inGaps int, outside []string) {
	// A gap is reported twice: when it opens (End zero) and when it
	// ends, with the same Start; one still open runs until now.
	ends := map[time.Time]time.Time{}
	for _, g := range gaps {
		if e, ok := ends[g.Start]; !ok || e.IsZero() {
			ends[g.Start] = g.End
		}
	}
	open := func(pr pubRec) bool {
		for start, end := range ends {
			if end.IsZero() {
				end = time.Now()
			}
			if pr.end >= start.UnixNano() && pr.start <= end.UnixNano() {
				return true
			}
		}
		return false
	}
	eachStream(k, p, func(pi, ci int, rs []pubRec, got func(int) recvRec) {
		for s, pr := range rs {
			if !pr.ok || !covered(k.subs[ci], pr) {
				continue
			}
			inGap := open(pr)
			if inGap {
				inGaps++
			}
			if got(s).n == 0 && !inGap {
				outside = append(outside, fmt.Sprintf("[%d,%d,%d] lost with no gap reported", pi, ci, s))
			}
		}
	})
	return inGaps, outside
}

// inflightLoss checks that what subscriber k lost was in flight at a cut
// (the fault, or the end of a subscription), which is the only loss a fault
// on one node with Replicas: 1 (or a gateway restart) may cause: a message
// is lost only if the node (or the gateway) had taken it and not yet
// delivered it at the cut. So, per stream (publisher, channel) and per
// subscription interval, every lost message started before the cut and
// comes after every message of the stream started before the cut that k
// received: losses are the stream's tail at the cut, never a hole. It
// returns how many messages were in flight at the cut (started before it,
// not received by then), which bounds the loss, and a line per violation.
// Unlike a bound computed from the latency measured before the fault, this
// does not depend on how fast the machine happens to be.
func inflightLoss(k *sink, p *publishers, cut func(iv interval) int64) (inflight int, violations []string) {
	eachStream(k, p, func(pi, ci int, rs []pubRec, got func(int) recvRec) {
		for _, iv := range k.subs[ci] {
			c := cut(iv)
			lastRecv, firstLost := -1, -1
			for s, pr := range rs {
				if !pr.ok || !covered([]interval{iv}, pr) {
					continue
				}
				g := got(s)
				if pr.start < c && (g.n == 0 || g.at >= c) {
					inflight++
				}
				switch {
				case g.n > 0 && pr.start < c:
					lastRecv = s
				case g.n == 0 && pr.start >= c:
					violations = append(violations, fmt.Sprintf("[%d,%d,%d] published %s after the cut and lost",
						pi, ci, s, time.Duration(pr.start-c).Round(time.Millisecond)))
				case g.n == 0 && firstLost < 0:
					firstLost = s
				}
			}
			if firstLost >= 0 && firstLost < lastRecv {
				violations = append(violations, fmt.Sprintf("[%d,%d,%d] lost, but [%d,%d,%d] after it was delivered: a hole, not an in-flight tail",
					pi, ci, firstLost, pi, ci, lastRecv))
			}
		}
	})
	return inflight, violations
}

func firstFew(s []string) []string {
	if len(s) > 5 {
		return append(s[:5:5], "…")
	}
	return s
}

func relTimes(ts []int64, ref time.Time) []string {
	var out []string
	for i, x := range ts {
		if i == 5 {
			out = append(out, "…")
			break
		}
		out = append(out, time.Duration(x-ref.UnixNano()).Round(time.Millisecond).String())
	}
	return out
}

func waitUntil(t *testing.T, d time.Duration, what string, cond func() bool) time.Time {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return time.Now()
}

// notReady is true once node id's incarnation inc is no longer ready.
func notReady(id string, inc int64) func(discovery.Snapshot) bool {
	return func(s discovery.Snapshot) bool {
		got, ok := readyInc(s, id)
		return !ok || got != inc
	}
}

// readyAgain is true once node id is ready with an incarnation other than
// inc.
func readyAgain(id string, inc int64) func(discovery.Snapshot) bool {
	return func(s discovery.Snapshot) bool {
		got, ok := readyInc(s, id)
		return ok && got != inc
	}
}

// mustWait is timeline.wait that fails the test on timeout.
func (r *run) mustWait(from time.Time, what string, pred func(discovery.Snapshot) bool) time.Time {
	r.t.Helper()
	at, ok := r.obs.wait(from, within, pred)
	if !ok {
		r.t.Fatalf("timed out after %s waiting for %s; the clients see %+v", within, what, r.obs.now().Nodes)
	}
	return at
}

// faulted is the node every single-node fault hits, and its incarnation.
func (r *run) faulted() (*node, int64) {
	n := r.nodes[0]
	inc, ok := readyInc(r.obs.now(), n.id)
	if !ok {
		r.t.Fatalf("node %s is not ready before the fault", n.id)
	}
	return n, inc
}

func joinNode(r *run) marks {
	id := fmt.Sprintf("n%d", len(r.nodes)+1)
	m := marks{fault: time.Now()}
	r.c.addNode(id, nodeOpts{})
	m.detect = r.mustWait(m.fault, id+" to appear", func(s discovery.Snapshot) bool { return stateOf(s, id) != "" })
	m.recover = r.mustWait(m.fault, id+" to be ready", func(s discovery.Snapshot) bool { _, ok := readyInc(s, id); return ok })
	m.note = "detect: the clients see the new node (joining); recover: it is ready (every client acked its subscriptions there)"
	return m
}

func drainNode(r *run) marks {
	n, _ := r.faulted()
	m := marks{fault: time.Now()}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := r.c.reg.RequestDrain(ctx, n.id, "chaos"); err != nil {
		r.t.Fatal(err)
	}
	m.detect = r.mustWait(m.fault, n.id+" to drain", func(s discovery.Snapshot) bool { return stateOf(s, n.id) == discovery.StateDraining })
	m.recover = r.mustWait(m.fault, n.id+" to be gone", func(s discovery.Snapshot) bool { return stateOf(s, n.id) == "" })
	a := n.agentProc()
	select {
	case <-a.done:
		if a.err != nil {
			r.t.Errorf("drained agent exited with %v", a.err)
		}
	case <-time.After(within):
		r.t.Errorf("drained agent still running after %s", within)
	}
	m.note = "detect: the clients see draining; recover: the node is gone (every client released it and Redis flushed)"
	return m
}

// signalRedis sends sig to the faulted node's redis-server and marks the
// fault.
func signalRedis(r *run, sig syscall.Signal) (n *node, inc int64, pid int, m marks) {
	n, inc = r.faulted()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	pid, err := n.redisPID(ctx)
	cancel()
	if err != nil {
		r.t.Fatal(err)
	}
	m = marks{fault: time.Now()}
	if err := syscall.Kill(pid, sig); err != nil {
		r.t.Fatal(err)
	}
	return n, inc, pid, m
}

func killRedis(r *run) marks {
	n, inc, _, m := signalRedis(r, syscall.SIGKILL)
	m.detect = r.mustWait(m.fault, n.id+" to leave", notReady(n.id, inc))
	m.recover = r.mustWait(m.fault, n.id+" to be ready again", readyAgain(n.id, inc))
	m.note = "the agent restarts redis-server; recover: the new run is ready"
	return m
}

func stopRedis(r *run) marks {
	n, inc, pid, m := signalRedis(r, syscall.SIGSTOP)
	cont := func() { syscall.Kill(pid, syscall.SIGCONT) }
	r.t.Cleanup(cont)
	m.detect = r.mustWait(m.fault, n.id+" to leave", notReady(n.id, inc))
	time.Sleep(time.Until(m.fault.Add(r.p.stopFor)))
	m.end = time.Now()
	cont()
	m.recover = r.mustWait(m.end, n.id+" to be ready again", readyAgain(n.id, inc))
	m.note = fmt.Sprintf("stopped %s; recover from SIGCONT", r.p.stopFor)
	return m
}

func killAgent(r *run) marks {
	n, inc := r.faulted()
	m := marks{fault: time.Now()}
	n.agentProc().kill()
	m.detect = r.mustWait(m.fault, n.id+" to expire", func(s discovery.Snapshot) bool { return stateOf(s, n.id) == "" })
	m.end = time.Now()
	n.startAgent()
	m.recover = r.mustWait(m.end, n.id+" to be ready again", readyAgain(n.id, inc))
	m.note = fmt.Sprintf("detect: the lease (TTL %s) expires; then a new agent attaches to the same Redis; recover from its start", r.p.leaseTTL)
	return m
}

// killAgentAndRedis kills the agent of a node that runs its own
// redis-server: the child dies with it (Pdeathsig), and nobody deletes the
// key. The clients see the node's port refuse connections and remove it
// themselves (fanout/downreport.go) before the lease expires.
func killAgentAndRedis(r *run) marks {
	n, inc := r.faulted()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	pid, err := n.redisPID(ctx)
	cancel()
	if err != nil {
		r.t.Fatal(err)
	}
	m := marks{fault: time.Now()}
	n.agentProc().kill()
	m.detect = r.mustWait(m.fault, n.id+" to leave", func(s discovery.Snapshot) bool { return stateOf(s, n.id) == "" })
	waitUntil(r.t, within, "the node's redis-server to die with its agent", func() bool { return syscall.Kill(pid, 0) != nil })
	m.end = time.Now()
	n.startAgent()
	m.recover = r.mustWait(m.end, n.id+" to be ready again", readyAgain(n.id, inc))
	m.note = fmt.Sprintf("the agent's redis-server child dies with it; detect: the clients see its port refuse connections and delete its key (the lease, TTL %s, would take longer); recover: a new agent and redis-server, from its start", r.p.leaseTTL)
	return m
}

func loseQuorum(r *run) marks {
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	lead := r.c.etcd.Leader(ctx)
	if lead < 0 {
		r.t.Fatal("no etcd leader")
	}
	kill := []int{lead, (lead + 1) % 3}
	before := len(r.obs.now().Ready())
	m := marks{fault: time.Now()}
	r.c.etcd.Kill(kill...)
	m.detect = r.mustWait(m.fault, "the clients to see etcd stale", func(s discovery.Snapshot) bool { return s.Stale })
	time.Sleep(time.Until(m.fault.Add(r.p.quorumFor)))
	m.end = time.Now()
	if err := r.c.etcd.Restart(kill...); err != nil {
		r.t.Fatal(err)
	}
	m.recover = r.mustWait(m.end, "the clients to see etcd again", func(s discovery.Snapshot) bool { return !s.Stale && len(s.Ready()) == before })
	m.note = fmt.Sprintf("2 of 3 members (the leader and one more) killed for %s; detect: the clients' view turns stale; recover: fresh again, every node still ready", r.p.quorumFor)
	if changes := r.obs.readyChanges(m.fault); changes > 0 {
		m.note += fmt.Sprintf("; the ready set changed %d times", changes)
	}
	return m
}

func restartMember(r *run) marks {
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	lead := r.c.etcd.Leader(ctx)
	if lead < 0 {
		r.t.Fatal("no etcd leader")
	}
	m := marks{fault: time.Now()}
	r.c.etcd.Kill(lead)
	for {
		if l := r.c.etcd.Leader(ctx); l >= 0 && l != lead {
			m.detect = time.Now()
			break
		}
		if ctx.Err() != nil {
			r.t.Fatal("no new etcd leader")
		}
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(time.Until(m.fault.Add(r.p.quorumFor / 4)))
	m.end = time.Now()
	if err := r.c.etcd.Restart(lead); err != nil {
		r.t.Fatal(err)
	}
	if err := r.c.etcd.WaitHealthy(ctx); err != nil {
		r.t.Fatal(err)
	}
	m.recover = time.Now()
	n, stale := r.obs.staleSpans(m.fault)
	m.note = fmt.Sprintf("the leader killed, restarted %s later on its data; detect: a new leader; recover: the member serves again; the clients' view was stale %d times (%s)",
		m.end.Sub(m.fault).Round(100*time.Millisecond), n, stale.Round(time.Millisecond))
	if changes := r.obs.readyChanges(m.fault); changes > 0 {
		m.note += fmt.Sprintf("; the ready set changed %d times", changes)
	}
	return m
}

func partition(r *run) marks {
	n, inc := r.faulted()
	m := marks{fault: time.Now()}
	if err := n.ns.LinkDown(); err != nil {
		r.t.Fatal(err)
	}
	r.t.Cleanup(func() { n.ns.LinkUp() })
	m.detect = r.mustWait(m.fault, n.id+" to leave", notReady(n.id, inc))
	time.Sleep(time.Until(m.fault.Add(r.p.cutFor)))
	m.end = time.Now()
	if err := n.ns.LinkUp(); err != nil {
		r.t.Fatal(err)
	}
	m.recover = r.mustWait(m.end, n.id+" to be ready again", readyAgain(n.id, inc))
	m.note = fmt.Sprintf("the Redis in its own network namespace, its veth link down for %s; recover from link up", r.p.cutFor)
	return m
}

func rollingRestart(r *run) marks {
	m := marks{fault: time.Now()}
	for _, n := range r.nodes {
		inc, ok := readyInc(r.obs.now(), n.id)
		if !ok {
			r.t.Fatalf("node %s not ready before its restart", n.id)
		}
		t0 := time.Now()
		if code := n.agentProc().stop(within); code != 0 {
			r.t.Fatalf("agent %s exited with %d on SIGTERM", n.id, code)
		}
		r.mustWait(t0, n.id+" to be gone", func(s discovery.Snapshot) bool { return stateOf(s, n.id) == "" })
		n.startAgent()
		r.mustWait(t0, n.id+" to be ready again", readyAgain(n.id, inc))
	}
	m.recover = time.Now()
	m.note = fmt.Sprintf("%d nodes, one at a time: SIGTERM (drain), then a new agent and redis-server on the same port; recover: the whole roll", len(r.nodes))
	return m
}

// deleteNodeKey deletes the faulted node's key in etcd, as `etcdctl del`
// would: the agent must notice and register the node again.
func deleteNodeKey(r *run) marks {
	n, inc := r.faulted()
	m := marks{fault: time.Now()}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := r.c.cli.Delete(ctx, r.c.reg.NodeKey(n.id)); err != nil {
		r.t.Fatal(err)
	}
	m.detect = r.mustWait(m.fault, n.id+" to be gone", notReady(n.id, inc))
	m.recover = r.mustWait(m.fault, n.id+" to be ready again", readyAgain(n.id, inc))
	m.note = "etcdctl del of the node's key; detect: the clients no longer see it; recover: the agent registered it again (new incarnation) and it is ready"
	return m
}

// cutSubscriberFromEtcd cuts the first fanout subscriber's path to etcd
// (Redis stays reachable), waits until its lease has expired so that a new
// node can join without it, adds a node, heals the path once the node is
// ready and the load has run on it, and waits for the subscriber to re-sync.
func cutSubscriberFromEtcd(r *run) marks {
	m := marks{fault: time.Now()}
	r.etcdLink.Cut()
	id := fmt.Sprintf("n%d", len(r.nodes)+1)
	waitUntil(r.t, within, "the cut subscriber's lease to expire", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		clients, err := r.c.reg.Clients(ctx)
		return err == nil && !slices.ContainsFunc(clients, func(ci discovery.ClientInfo) bool { return ci.ID == r.cutID })
	})
	r.c.addNode(id, nodeOpts{})
	r.mustWait(m.fault, id+" to be ready", func(s discovery.Snapshot) bool { _, ok := readyInc(s, id); return ok })
	time.Sleep(r.p.cutFor / 2) // messages homed on the new node, which the cut subscriber cannot see
	m.end = time.Now()
	r.etcdLink.Heal()
	waitUntil(r.t, within, "the cut subscriber's gap to end", func() bool {
		gaps, _ := r.gaps.all()
		return len(gaps) > 0 && !gaps[len(gaps)-1].End.IsZero()
	})
	gaps, at := r.gaps.all()
	m.detect, m.recover = at[0], gaps[len(gaps)-1].End
	m.note = fmt.Sprintf("one fanout subscriber's etcd connection cut (Redis reachable), %s joins once its lease expired; detect: it reports a gap (%d Gap events); recover: the gap ends after the path heals; its losses must lie inside the gap", id, len(gaps))
	return m
}
