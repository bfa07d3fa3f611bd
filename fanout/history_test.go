package fanout_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/pubmesh/pubmesh/discovery"
	"github.com/pubmesh/pubmesh/fanout"
)

func applyConfig(t *testing.T, e *env, doc string) {
	t.Helper()
	if _, err := e.reg.ApplyConfig(context.Background(), []byte(doc), discovery.ConfigChange{Author: "test"}); err != nil {
		t.Fatal(err)
	}
}

func publishN(t *testing.T, c *fanout.Client, channel string, from, to int) {
	t.Helper()
	for i := from; i <= to; i++ {
		if err := c.Publish(context.Background(), channel, []byte(fmt.Sprint(i))); err != nil {
			t.Fatal(err)
		}
	}
}

func payloads(ms []*fanout.Message) []string {
	out := make([]string, len(ms))
	for i, m := range ms {
		out[i] = string(m.Payload)
	}
	return out
}

func TestHistoryResume(t *testing.T) {
	e := newEnv(t)
	e.node("n1", discovery.StateReady)
	e.node("n2", discovery.StateReady)
	applyConfig(t, e, `namespaces: [{match: "h.*", history_size: 100}]`)
	pub := e.client(fanout.Config{})
	sub := e.client(fanout.Config{})
	ctx := context.Background()
	s, err := sub.Subscribe(ctx, "h.a")
	if err != nil {
		t.Fatal(err)
	}
	publishN(t, pub, "h.a", 1, 5)
	got := recv(t, s, 5, 5*time.Second)
	for i, m := range got {
		if m.Position() == "" {
			t.Fatalf("message %d has no position", i)
		}
	}
	pos3 := got[2].Position()
	publishN(t, pub, "h.a", 6, 10)

	// A new subscriber resumes after message 3: 4..10 from history, once
	// and in order, then live.
	other := e.client(fanout.Config{})
	r, err := other.SubscribeWith(ctx, fanout.SubscribeOptions{Since: map[string]string{"h.a": pos3}})
	if err != nil {
		t.Fatal(err)
	}
	publishN(t, pub, "h.a", 11, 12)
	rm := recv(t, r, 9, 5*time.Second)
	want := []string{"4", "5", "6", "7", "8", "9", "10", "11", "12"}
	if fmt.Sprint(payloads(rm)) != fmt.Sprint(want) {
		t.Fatalf("resumed %v, want %v", payloads(rm), want)
	}
	if rec, ok := r.Recovery("h.a"); !ok || !rec.Recovered || rec.Messages != 7 {
		t.Errorf("Recovery = %+v, %v", rec, ok)
	}
	select {
	case m := <-r.Messages():
		t.Fatalf("extra message %q", m.Payload)
	case <-time.After(200 * time.Millisecond):
	}
	// Resuming from the last position gets nothing old.
	h, err := other.History(ctx, "h.a", fanout.HistoryOptions{Since: rm[len(rm)-1].Position()})
	if err != nil || len(h.Messages) != 0 || !h.Recovered {
		t.Errorf("history after the newest position: %d messages, recovered %v, %v", len(h.Messages), h.Recovered, err)
	}
	// A plain read: everything, or the newest 3.
	h, err = other.History(ctx, "h.a", fanout.HistoryOptions{})
	if err != nil || len(h.Messages) != 12 || !h.Recovered {
		t.Errorf("full history: %v, recovered %v, %v", payloads(h.Messages), h.Recovered, err)
	}
	h, err = other.History(ctx, "h.a", fanout.HistoryOptions{Limit: 3, Reverse: true})
	if err != nil || fmt.Sprint(payloads(h.Messages)) != "[12 11 10]" {
		t.Errorf("newest 3: %v, %v", payloads(h.Messages), err)
	}
	// Channels outside the namespace keep nothing.
	if _, err := other.History(ctx, "nohist", fanout.HistoryOptions{}); !errors.Is(err, fanout.ErrNoHistory) {
		t.Errorf("history of a channel without: %v", err)
	}
	if _, err := other.History(ctx, "h.a", fanout.HistoryOptions{Since: "garbage"}); !errors.Is(err, fanout.ErrBadPosition) {
		t.Errorf("bad position: %v", err)
	}
}

// History trimmed past the position: recovered is false, and what is left
// is still delivered.
func TestHistoryTrimmedIsNotRecovered(t *testing.T) {
	e := newEnv(t)
	e.node("n1", discovery.StateReady)
	applyConfig(t, e, `namespaces: [{match: "h.*", history_size: 3}]`)
	pub := e.client(fanout.Config{})
	ctx := context.Background()
	s, err := pub.Subscribe(ctx, "h.t")
	if err != nil {
		t.Fatal(err)
	}
	publishN(t, pub, "h.t", 1, 2)
	pos := recv(t, s, 2, 5*time.Second)[0].Position()
	publishN(t, pub, "h.t", 3, 10)
	h, err := pub.History(ctx, "h.t", fanout.HistoryOptions{Since: pos})
	if err != nil {
		t.Fatal(err)
	}
	if h.Recovered || fmt.Sprint(payloads(h.Messages)) != "[8 9 10]" {
		t.Errorf("trimmed: recovered %v, %v", h.Recovered, payloads(h.Messages))
	}
}

// A node joins and channels' homes move: history on the old home and the
// new one is read together, and nothing is missing.
func TestHistoryAcrossJoin(t *testing.T) {
	e := newEnv(t)
	e.node("n1", discovery.StateReady)
	applyConfig(t, e, `namespaces: [{match: "**", history_size: 1000}]`)
	pub := e.client(fanout.Config{})
	ctx := context.Background()
	chans := []string{"j0", "j1", "j2", "j3", "j4", "j5", "j6", "j7"}
	s, err := pub.Subscribe(ctx, chans...)
	if err != nil {
		t.Fatal(err)
	}
	for _, ch := range chans {
		publishN(t, pub, ch, 1, 3)
	}
	first := map[string]string{}
	for _, m := range recv(t, s, 3*len(chans), 5*time.Second) {
		if _, ok := first[m.Channel]; !ok {
			first[m.Channel] = m.Position()
		}
	}
	e.node("n2", discovery.StateReady)
	e.node("n3", discovery.StateReady)
	deadline := time.Now().Add(5 * time.Second)
	for len(pub.Nodes().Ready()) != 3 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond) // the connections to the new nodes
	for _, ch := range chans {
		publishN(t, pub, ch, 4, 6)
	}
	nodes := map[string]bool{}
	for _, ch := range chans {
		h, err := pub.History(ctx, ch, fanout.HistoryOptions{Since: first[ch]})
		if err != nil {
			t.Fatal(err)
		}
		if !h.Recovered || fmt.Sprint(payloads(h.Messages)) != "[2 3 4 5 6]" {
			t.Errorf("%s: recovered %v, %v", ch, h.Recovered, payloads(h.Messages))
		}
		for _, m := range h.Messages {
			nodes[m.Node] = true
		}
	}
	if len(nodes) < 2 {
		t.Errorf("history came from %v only: the join moved no channel", nodes)
	}
}

// Resuming while a publisher keeps publishing: no gap and no duplicate at
// the junction of history and live.
func TestHistoryJunctionUnderLoad(t *testing.T) {
	e := newEnv(t)
	e.node("n1", discovery.StateReady)
	e.node("n2", discovery.StateReady)
	applyConfig(t, e, `namespaces: [{match: "**", history_size: 100000}]`)
	pub := e.client(fanout.Config{})
	ctx := context.Background()
	s, err := pub.Subscribe(ctx, "load")
	if err != nil {
		t.Fatal(err)
	}
	publishN(t, pub, "load", 1, 1)
	pos := recv(t, s, 1, 5*time.Second)[0].Position()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var n int
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 2; ; i++ {
			select {
			case <-stop:
				n = i - 1
				return
			default:
			}
			if err := pub.Publish(ctx, "load", []byte(fmt.Sprint(i))); err != nil {
				t.Error(err)
				n = i - 1
				return
			}
		}
	}()
	time.Sleep(100 * time.Millisecond)
	other := e.client(fanout.Config{SubscriptionBuffer: 1 << 20})
	r, err := other.SubscribeWith(ctx, fanout.SubscribeOptions{Since: map[string]string{"load": pos}})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	close(stop)
	wg.Wait()
	got := recv(t, r, n-1, 10*time.Second)
	for i, m := range got {
		if want := fmt.Sprint(i + 2); string(m.Payload) != want {
			t.Fatalf("message %d is %q, want %s (of %d)", i, m.Payload, want, n)
		}
	}
	if rec, _ := r.Recovery("load"); !rec.Recovered {
		t.Errorf("not recovered: %+v", rec)
	}
	select {
	case m := <-r.Messages():
		t.Fatalf("extra message %q after %d", m.Payload, n)
	case <-time.After(300 * time.Millisecond):
	}
}

// A node that held part of the gap crashes. With Replicas 1 the recovery
// cannot be proven and says so (what is left is still delivered); with
// Replicas 2 every message is on the other node too and nothing is lost.
func TestHistoryNodeCrash(t *testing.T) {
	for _, replicas := range []int{1, 2} {
		t.Run(fmt.Sprintf("replicas %d", replicas), func(t *testing.T) {
			e := newEnv(t)
			ctx := context.Background()
			var regs []*discovery.Registration
			var servers []interface{ Kill() }
			for _, id := range []string{"n1", "n2"} {
				rs, g := e.node(id, discovery.StateReady)
				if err := e.reg.RecordRun(ctx, discovery.HistoryRun{Node: id, RunID: g.Node().RunID, StartedAt: time.Now()}); err != nil {
					t.Fatal(err)
				}
				regs, servers = append(regs, g), append(servers, rs)
			}
			applyConfig(t, e, `namespaces: [{match: "**", history_size: 1000}]`)
			pub := e.client(fanout.Config{Replicas: replicas, LeaseTTL: time.Second})
			s, err := pub.Subscribe(ctx, "c0", "c1", "c2", "c3")
			if err != nil {
				t.Fatal(err)
			}
			first := map[string]string{}
			for _, ch := range []string{"c0", "c1", "c2", "c3"} {
				publishN(t, pub, ch, 1, 1)
			}
			for _, m := range recv(t, s, 4, 5*time.Second) {
				first[m.Channel] = m.Position()
			}
			for _, ch := range []string{"c0", "c1", "c2", "c3"} {
				publishN(t, pub, ch, 2, 4)
			}
			recv(t, s, 12, 5*time.Second)
			// n1 crashes: its Redis dies and its key goes.
			servers[0].Kill()
			regs[0].Close(ctx)
			deadline := time.Now().Add(5 * time.Second)
			for len(pub.Nodes().Nodes) != 1 && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond)
			}
			// The client records that the run ended without a hand-off
			// (after two LeaseTTLs, in case it comes back).
			deadline = time.Now().Add(10 * time.Second)
			for {
				runs, err := e.reg.HistoryRuns(ctx)
				if err != nil {
					t.Fatal(err)
				}
				ended := false
				for _, r := range runs {
					ended = ended || (r.Node == "n1" && r.Ended() && !r.HandedOff)
				}
				if ended {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("n1's run not ended: %+v", runs)
				}
				time.Sleep(10 * time.Millisecond)
			}
			recovered, complete := 0, 0
			for _, ch := range []string{"c0", "c1", "c2", "c3"} {
				h, err := pub.History(ctx, ch, fanout.HistoryOptions{Since: first[ch]})
				if err != nil {
					t.Fatal(err)
				}
				if h.Recovered {
					recovered++
				}
				if fmt.Sprint(payloads(h.Messages)) == "[2 3 4]" {
					complete++
				}
				if h.Recovered && fmt.Sprint(payloads(h.Messages)) != "[2 3 4]" {
					t.Errorf("%s: recovered:true with %v: a silent gap", ch, payloads(h.Messages))
				}
			}
			switch replicas {
			case 1:
				if recovered != 0 {
					t.Errorf("%d of 4 channels recovered across a crash with Replicas 1", recovered)
				}
				if complete == 4 {
					t.Errorf("no channel lost anything: was any homed on n1?")
				}
			case 2:
				if recovered != 4 || complete != 4 {
					t.Errorf("Replicas 2: %d recovered, %d complete, want 4 and 4", recovered, complete)
				}
			}
		})
	}
}

// A subscriber's connection to a node breaks while messages are published
// there: on a history channel, what it missed is read from the node's
// history as soon as the connection is back, before newer messages, so
// nothing is lost and the order holds; without history the break loses
// them (which shows what the fill does).
func TestHistoryFillsBrokenSubscription(t *testing.T) {
	for _, hist := range []bool{true, false} {
		t.Run(fmt.Sprintf("history %v", hist), func(t *testing.T) {
			e := newEnv(t)
			rs, _ := e.node("n1", discovery.StateReady)
			if hist {
				applyConfig(t, e, `namespaces: [{match: "f.*", history_size: 10000}]`)
			}
			pub := e.client(fanout.Config{})
			reg := prometheus.NewRegistry()
			sub := e.client(fanout.Config{SubscriptionBuffer: 1 << 16, Registerer: reg})
			ctx := context.Background()
			s, err := sub.Subscribe(ctx, "f.x")
			if err != nil {
				t.Fatal(err)
			}
			const n = 600
			done := make(chan struct{})
			go func() {
				defer close(done)
				for i := 1; i <= n; i++ {
					if err := pub.Publish(ctx, "f.x", []byte(fmt.Sprint(i))); err != nil {
						t.Error(err)
						return
					}
					if i == n/3 {
						// Cut the subscriber's connection (the only pub/sub
						// client) and every new one for 200 ms, while the
						// publisher goes on.
						go func() {
							rdb := redis.NewClient(&redis.Options{Addr: rs.Addr})
							defer rdb.Close()
							for end := time.Now().Add(200 * time.Millisecond); time.Now().Before(end); {
								rdb.Do(ctx, "CLIENT", "KILL", "TYPE", "pubsub")
								time.Sleep(time.Millisecond)
							}
						}()
					}
					time.Sleep(time.Millisecond)
				}
			}()
			<-done
			var got []int
			timeout := time.After(5 * time.Second)
		loop:
			for len(got) < n {
				select {
				case m := <-s.Messages():
					var v int
					fmt.Sscan(string(m.Payload), &v)
					got = append(got, v)
				case <-timeout:
					break loop
				case <-time.After(time.Second):
					break loop
				}
			}
			inOrder := true
			for i := 1; i < len(got); i++ {
				inOrder = inOrder && got[i] > got[i-1]
			}
			if hist {
				if len(got) != n || !inOrder {
					t.Errorf("history on: got %d of %d messages, in order %v", len(got), n, inOrder)
				}
			} else if len(got) == n {
				t.Errorf("history off: the break lost nothing; the test cannot tell what the fill does (reconnects %v, duplicates %v)",
					metricValue(t, reg, "pubmesh_fanout_reconnects_total"), metricValue(t, reg, "pubmesh_fanout_duplicates_dropped_total"))
			}
		})
	}
}
