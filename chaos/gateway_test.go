package chaos

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/pubmesh/pubmesh/fanout"
	"github.com/pubmesh/pubmesh/pubmeshtest"
)

// reconnectMargin is how long, beyond its backoff, a client may take to
// connect and re-subscribe once the gateway is back: the WebSocket
// handshake and one subscribe, queued behind every other client's (1000
// at once in the full run: ws's TestManyClients connects 1000 clients in
// a few seconds under the race detector) and, for the first subscriber of
// a channel, the new gateway's fanout subscription on every node. 15 s
// leaves room for a loaded 2-core machine.
const reconnectMargin = 15 * time.Second

// runGatewayRestart is scenario 9: the gateway restarted (SIGTERM, then a
// new process on the same port) under many WebSocket clients that
// reconnect like pubmesh.js.
//
// The bound: a client whose connection ended at tc retries after delays
// d1, d2, … with d_k in [s_k/2, s_k], s_k = min(maxDelay, minDelay*2^(k-1)).
// Before attempt k it has waited at least (s_1+…+s_{k-1})/2 =
// minDelay*(2^(k-1)-1)/2, so s_k <= 2*(elapsed) + minDelay. If the
// gateway serves again at tu, the client's last failed attempt was before
// tu (elapsed <= tu - t0, t0 the SIGTERM), so its next attempt comes by
// tu + min(maxDelay, 2*(tu-t0) + minDelay). Add reconnectMargin for the
// handshake and the subscribe: every client must be re-subscribed by then.
func runGatewayRestart(t *testing.T, sc scenario) {
	p := paramsFor()
	c := newCluster(t, p, false)
	pubmeshtest.ApplyConfig(t, c.reg, historyConfig)
	for i := range p.nodes {
		c.addNode(fmt.Sprintf("n%d", i+1), nodeOpts{})
	}
	gw := c.startGateway()
	c.waitReady(within)
	gw.waitHealthy(within)

	var pubClients []*fanout.Client
	for range p.publishers {
		pubClients = append(pubClients, c.client(c.fanoutConfig(sc.replicas)))
	}
	var sinks []*sink
	for i := range p.fanoutSubs {
		fc := c.client(c.fanoutConfig(1))
		c.waitReady(within, fc)
		sinks = append(sinks, fanoutSink(t, fmt.Sprintf("fanout%d", i), fc, p.publishers, p.channels))
	}
	var clients []*rclient
	for i := range p.wsClients {
		k := newSink(fmt.Sprintf("ws%d", i), p.publishers, p.channels)
		rc := newRClient(gw.url(), []int{i % p.channels}, k).withResume()
		go rc.run()
		t.Cleanup(rc.close)
		clients = append(clients, rc)
		sinks = append(sinks, k)
	}
	waitUntil(t, 2*within, fmt.Sprintf("%d WebSocket clients to subscribe", len(clients)), func() bool {
		for _, rc := range clients {
			if !rc.subscribedNow() {
				return false
			}
		}
		return true
	})
	c.waitReady(within, pubClients...)
	pubs := startPublishers(t, pubClients, p.channels, p.rate)
	time.Sleep(p.pre)

	t0 := time.Now()
	if sc.sigkill {
		gw.proc().kill()
	} else if code := gw.proc().stop(within); code != 0 {
		t.Errorf("gateway exited with %d on SIGTERM", code)
	}
	stopped := time.Now()
	gw.start()
	tu := gw.waitHealthy(within)
	minDelay, maxDelay := clients[0].minDelay, clients[0].maxDelay
	bound := tu.Add(min(maxDelay, 2*tu.Sub(t0)+minDelay) + reconnectMargin)
	var last time.Time
	allBack := func() bool {
		last = time.Time{}
		for _, rc := range clients {
			at := rc.subscribedAfter(t0)
			if at.IsZero() {
				return false
			}
			last = maxTime(last, at)
		}
		return true
	}
	deadline := bound.Add(within) // wait past the bound, to report the real time
	for !allBack() && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	missing := 0
	var lastClose time.Time
	for _, rc := range clients {
		if rc.subscribedAfter(t0).IsZero() {
			missing++
		}
		lastClose = maxTime(lastClose, rc.closedAfter(t0))
	}
	if missing > 0 {
		var errs []string
		for _, rc := range clients {
			if rc.subscribedAfter(t0).IsZero() {
				rc.mu.Lock()
				errs = append(errs, fmt.Sprint(rc.errs))
				rc.mu.Unlock()
				if len(errs) == 3 {
					break
				}
			}
		}
		t.Errorf("%d of %d clients not re-subscribed %s after the gateway was back; some errors: %v", missing, len(clients), time.Since(tu).Round(time.Millisecond), errs)
	} else if last.After(bound) {
		t.Errorf("the last client re-subscribed %s after the gateway was back, bound %s", last.Sub(tu).Round(time.Millisecond), bound.Sub(tu).Round(time.Millisecond))
	}
	time.Sleep(p.post)
	pubs.finish()
	published := pubs.published()
	quiesce(sinks[:p.fanoutSubs], int64(published), 60*time.Second)
	time.Sleep(time.Second) // the WebSocket clients each get one channel: give them a moment more

	res := row{num: sc.num, name: sc.name, replicas: sc.replicas, published: published,
		fanoutSubs: p.fanoutSubs, wsSubs: len(clients), detect: -1, recover: -1}
	pubs.mu.Lock()
	res.failed, res.slowest = pubs.failed, pubs.slowest
	pubs.mu.Unlock()
	if !lastClose.IsZero() {
		res.detect = lastClose.Sub(t0)
	}
	if missing == 0 {
		res.recover = last.Sub(tu)
	}
	var worst time.Duration
	for i, k := range sinks {
		var sr subResult
		if i < p.fanoutSubs {
			sr = account(k, pubs, t0)
		} else {
			// A WebSocket client resumes from its last position on
			// reconnect (history is on): it stays subscribed from its
			// first confirmation, and must get everything, once, in order.
			sr = account(k, pubs, t0)
			worst = max(worst, sr.maxLatency)
		}
		res.subs = append(res.subs, sr)
	}
	how := "SIGTERM, 1001 to every client"
	if sc.sigkill {
		how = "kill -9"
	}
	var recOK, recNot int
	for _, rc := range clients {
		ok, not := rc.recoveries()
		recOK, recNot = recOK+ok, recNot+not
	}
	res.note = fmt.Sprintf("%d clients, one channel each, reconnecting like pubmesh.js (backoff %s doubling to %s, jitter) and resuming from their last position (history on); "+
		"gateway stopped in %s (%s), serving again %s after; %d resumes recovered, %d not; detect: the last client saw its close; recover: the last client re-subscribed, from the gateway serving again (bound %s)",
		len(clients), minDelay, maxDelay, stopped.Sub(t0).Round(10*time.Millisecond), how, tu.Sub(t0).Round(10*time.Millisecond), recOK, recNot, bound.Sub(tu).Round(100*time.Millisecond))
	if recNot > 0 {
		t.Errorf("%d resumes answered recovered:false across a gateway restart (history holds everything)", recNot)
	}
	record(res)
	t.Log(summarize(res))

	if res.failed > 0 {
		t.Errorf("%d publishes failed", res.failed)
	}
	for _, s := range res.subs {
		if s.lost > 0 {
			t.Errorf("%s lost %d of %d messages across the gateway restart (lost ones acked at %v)",
				s.name, s.lost, s.expected, relTimes(s.lostAcked, t0))
		}
		if s.dups > 0 {
			t.Errorf("%s got %d duplicates", s.name, s.dups)
		}
		if s.outOfOrder > 0 {
			t.Errorf("%s got %d messages out of order", s.name, s.outOfOrder)
		}
	}
}

// summarize is row.summary with the WebSocket clients folded into one
// line when there are many.
func summarize(r row) string {
	if len(r.subs) <= 8 {
		return r.summary()
	}
	short := r
	short.subs = slices.Clone(r.subs[:r.fanoutSubs])
	ws := r.subs[r.fanoutSubs:]
	agg := subResult{name: fmt.Sprintf("ws×%d", len(ws))}
	for _, s := range ws {
		agg.expected += s.expected
		agg.received += s.received
		agg.lost += s.lost
		agg.bound += s.bound
		agg.dups += s.dups
		agg.outOfOrder += s.outOfOrder
		agg.maxLatency = max(agg.maxLatency, s.maxLatency)
	}
	short.subs = append(short.subs, agg)
	return short.summary()
}
