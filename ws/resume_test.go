package ws

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// histDoc is the cluster configuration of the history tests: channels
// h.* keep 100 messages, the rest none.
const histDoc = `namespaces: [{match: "h.*", history_size: 100}]`

// newHistGW is a gateway whose cluster keeps history for h.*.
func newHistGW(t *testing.T, cfg Config) *gw {
	t.Helper()
	g := newGW(t, cfg, gwOptions{})
	g.applyConfig(t, histDoc)
	return g
}

// call sends the request m with a new id and returns the reply.
func (c *wsClient) call(m map[string]any) frame {
	c.t.Helper()
	c.nextID++
	m["id"] = c.nextID
	c.send(m)
	want := fmt.Sprint(c.nextID)
	return c.next(10*time.Second, func(f frame) bool { return f.Op != OpMessage && string(f.ID) == want })
}

// resume subscribes to channel from since and returns the ok, failing on
// an error.
func (c *wsClient) resume(channel, since string) frame {
	c.t.Helper()
	f := c.call(map[string]any{"op": OpSubscribe, "channel": channel, "since": since})
	if f.Op != OpOK || f.Recovered == nil || f.Count == nil {
		c.t.Fatalf("subscribe %s since %.20s…: %+v, want ok with recovered and count", channel, since, f)
	}
	return f
}

// subscribePos subscribes to channel and returns the ok's position.
func (c *wsClient) subscribePos(channel string) string {
	c.t.Helper()
	f := c.request(OpSubscribe, channel, nil)
	if f.Op != OpOK || f.Recovered != nil {
		c.t.Fatalf("subscribe %s: %+v", channel, f)
	}
	return f.Pos
}

// publishRange publishes the numbers from..to to channel through client g.
func publishRange(t *testing.T, g *gw, channel string, from, to int) {
	t.Helper()
	for i := from; i <= to; i++ {
		if err := g.client.Publish(context.Background(), channel, []byte(strconv.Itoa(i))); err != nil {
			t.Fatal(err)
		}
	}
}

// expectNumbers reads message frames of channel carrying the numbers
// from..to, in order, each with a position, and returns the last frame.
func (c *wsClient) expectNumbers(channel string, from, to int) frame {
	c.t.Helper()
	var last frame
	for i := from; i <= to; i++ {
		m := c.message(10 * time.Second)
		if m.Channel != channel || string(m.Data) != strconv.Itoa(i) {
			c.t.Fatalf("message %d of %d..%d: got %s on %s", i, from, to, m.Data, m.Channel)
		}
		if m.Pos == "" {
			c.t.Fatalf("message %s on %s has no pos", m.Data, channel)
		}
		last = m
	}
	return last
}

// expectNoMessage fails if a message frame arrives within d.
func (c *wsClient) expectNoMessage(d time.Duration) {
	c.t.Helper()
	for _, f := range c.queue {
		if f.Op == OpMessage {
			c.t.Fatalf("unexpected message %s on %s", f.Data, f.Channel)
		}
	}
	f, err := c.read(d)
	if err == nil {
		c.t.Fatalf("unexpected frame %+v", f)
	}
}

// TestResume: a client that was away resumes from the last pos it got:
// the messages published meanwhile arrive once, in order, after an ok with
// recovered:true and their count, then live ones. The ok of a plain
// subscribe carries the channel's position, so a client that got no
// message yet can resume too; a channel without history has none, and
// refuses since with no_history naming its namespace; a position that is
// not one is bad_request.
func TestResume(t *testing.T) {
	t.Parallel()
	g := newHistGW(t, Config{Insecure: true})

	a := g.dial(t, "", nil)
	p0 := a.subscribePos("h.a")
	if p0 == "" {
		t.Fatal("the ok of a subscribe to a history channel has no pos")
	}
	publishRange(t, g, "h.a", 1, 3)
	p3 := a.expectNumbers("h.a", 1, 3).Pos
	a.c.Close()
	publishRange(t, g, "h.a", 4, 8)

	b := g.dial(t, "", nil)
	if ok := b.resume("h.a", p3); !*ok.Recovered || *ok.Count != 5 {
		t.Fatalf("resume after 3: %+v, want recovered 5", ok)
	}
	b.expectNumbers("h.a", 4, 8)
	publishRange(t, g, "h.a", 9, 10)
	b.expectNumbers("h.a", 9, 10)
	b.expectNoMessage(300 * time.Millisecond)

	// From the ok's position (no message seen): everything after it.
	c := g.dial(t, "", nil)
	if ok := c.resume("h.a", p0); !*ok.Recovered || *ok.Count != 10 {
		t.Fatalf("resume from the subscribe's pos: %+v, want recovered 10", ok)
	}
	c.expectNumbers("h.a", 1, 10)
	// Since on a channel this connection already has: the subscription
	// goes on, nothing is sent again.
	if f := c.call(map[string]any{"op": OpSubscribe, "channel": "h.a", "since": p3}); f.Op != OpOK || f.Recovered != nil {
		t.Fatalf("resume of a channel already subscribed: %+v, want a plain ok", f)
	}
	c.expectNoMessage(300 * time.Millisecond)
	if n := g.metric("recoveries", "recovered"); n != 2 {
		t.Errorf("recoveries{recovered} = %v, want 2", n)
	}

	// A channel without history: no pos anywhere, since refused.
	d := g.dial(t, "", nil)
	if pos := d.subscribePos("plain"); pos != "" {
		t.Fatalf("the ok of a subscribe to a channel without history has pos %q", pos)
	}
	publishRange(t, g, "plain", 1, 1)
	if m := d.message(10 * time.Second); m.Pos != "" {
		t.Fatalf("message of a channel without history has pos %q", m.Pos)
	}
	f := d.call(map[string]any{"op": OpSubscribe, "channel": "other", "since": p3})
	if f.Code != CodeNoHistory || !strings.Contains(f.Message, `namespace "**" has history_size 0`) {
		t.Fatalf("since on a channel without history: %+v", f)
	}
	for _, bad := range []string{"garbage", "p1.!!", p3 + "x"} {
		if f := d.call(map[string]any{"op": OpSubscribe, "channel": "h.bad", "since": bad}); f.Code != CodeBadRequest {
			t.Fatalf("since %q: %+v, want bad_request", bad, f)
		}
	}
	// Neither refusal left a subscription behind.
	d.mustOK(OpPing, "", nil)
	if f := d.request(OpUnsubscribe, "h.bad", nil); f.Op != OpOK {
		t.Fatal(f)
	}
	if n := g.metric("subscriptions"); n != 3 { // b, c and d's plain
		t.Errorf("subscriptions gauge %v, want 3", n)
	}
}

// TestResumeJunction: while a client resumes, a publisher publishes
// without pause, and messages are published while the client's live
// frames are held (so they are both in the history read and live): the
// client gets every message after its position exactly once, in order,
// then live ones, with no gap and no duplicate at the junction.
func TestResumeJunction(t *testing.T) {
	t.Parallel()
	cfg := Config{Insecure: true}
	var heldSeen sync.Once
	heldOK := make(chan struct{})
	var g *gw
	cfg.hooks.held = func(c *session, channel string) {
		// Publish 5 while held, and wait until the hub handed them to the
		// hold: history will have them as well. (A server goroutine: no
		// t.Fatal here.)
		heldSeen.Do(func() {
			defer close(heldOK)
			for i := 0; i < 5; i++ {
				if err := g.client.Publish(context.Background(), channel, []byte(fmt.Sprintf(`"held-%d"`, i))); err != nil {
					t.Errorf("publish while held: %v", err)
					return
				}
			}
			for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
				c.holds.mu.Lock()
				n := len(c.holds.m[channel].frames)
				c.holds.mu.Unlock()
				if n >= 5 {
					return
				}
			}
			t.Errorf("the 5 messages published while held did not reach the hold")
		})
	}
	// Room for everything the publisher can publish during the test.
	g = newGW(t, cfg, gwOptions{})
	g.applyConfig(t, `namespaces: [{match: "h.*", history_size: 10000}]`)
	// The background publisher's messages are numbers, those published
	// while held strings: each kind must arrive in order, once.
	a := g.dial(t, "", nil)
	a.mustOK(OpSubscribe, "h.j", nil)
	publishRange(t, g, "h.j", 1, 20)
	pos := a.expectNumbers("h.j", 1, 20).Pos
	a.c.Close()

	ctx, stop := context.WithCancel(context.Background())
	published := make(chan int, 1)
	go func() {
		n := 20
		defer func() { published <- n }()
		for ctx.Err() == nil && n < 5000 {
			if err := g.client.Publish(context.Background(), "h.j", []byte(strconv.Itoa(n+1))); err != nil {
				return
			}
			n++
			if n%50 == 0 {
				time.Sleep(time.Millisecond)
			}
		}
	}()
	defer stop()
	time.Sleep(20 * time.Millisecond) // the publisher is running
	b := g.dial(t, "", nil)
	ok := b.resume("h.j", pos)
	<-heldOK
	time.Sleep(50 * time.Millisecond) // live messages after the junction
	stop()
	last := <-published
	if !*ok.Recovered || *ok.Count < 5 {
		t.Fatalf("resume: recovered %v, count %d, want recovered with at least the 5 held", *ok.Recovered, *ok.Count)
	}
	// Per publisher: the numbers 21..last in order, once each; the 5
	// strings in order, once each.
	next, held := 21, 0
	for next <= last || held < 5 {
		m := b.message(10 * time.Second)
		if m.Pos == "" {
			t.Fatalf("message %s has no pos", m.Data)
		}
		switch d := string(m.Data); {
		case strings.HasPrefix(d, `"held-`):
			if d != fmt.Sprintf(`"held-%d"`, held) {
				t.Fatalf("got %s, want held-%d (duplicate or out of order at the junction)", d, held)
			}
			held++
		case d != strconv.Itoa(next):
			t.Fatalf("got %s, want %d (gap, duplicate or reorder at the junction; %d from history)", d, next, *ok.Count)
		default:
			next++
		}
	}
	b.expectNoMessage(300 * time.Millisecond)
	t.Logf("published 21..%d and 5 while held; %d came from history", last, *ok.Count)
}

// TestResumeHoldOverflow: a resume whose channel brings more live frames
// than it may hold while reading history closes the connection as a slow
// consumer (4008), never says recovered over a gap; the client resumes
// again from what it got.
func TestResumeHoldOverflow(t *testing.T) {
	t.Parallel()
	cfg := Config{Insecure: true, resumeHold: 3}
	var g *gw
	var once sync.Once
	cfg.hooks.held = func(c *session, channel string) {
		// The first resume gets 5 live messages while it may hold 3. (A
		// server goroutine: no t.Fatal here.)
		once.Do(func() {
			for i := 2; i <= 6; i++ {
				if err := g.client.Publish(context.Background(), channel, []byte(strconv.Itoa(i))); err != nil {
					t.Errorf("publish while held: %v", err)
					return
				}
			}
			select {
			case <-c.closing:
			case <-time.After(10 * time.Second):
				t.Errorf("the connection holding 5 of at most 3 frames was not closed")
			}
		})
	}
	g = newHistGW(t, cfg)
	a := g.dial(t, "", nil)
	a.mustOK(OpSubscribe, "h.o", nil)
	publishRange(t, g, "h.o", 1, 1)
	pos := a.expectNumbers("h.o", 1, 1).Pos
	a.c.Close()

	b := g.dial(t, "", nil)
	b.send(map[string]any{"op": OpSubscribe, "channel": "h.o", "since": pos, "id": 1})
	if ce := b.closeErr(10 * time.Second); ce.Code != CloseSlowConsumer {
		t.Fatalf("close %d %q, want 4008", ce.Code, ce.Text)
	}
	if n := g.metric("slow_consumers"); n != 1 {
		t.Errorf("slow consumers %v, want 1", n)
	}
	c := g.dial(t, "", nil)
	if ok := c.resume("h.o", pos); !*ok.Recovered || *ok.Count != 5 {
		t.Fatalf("second resume: %+v, want recovered 5", ok)
	}
	c.expectNumbers("h.o", 2, 6)
}

// TestResumeTrimmed: history that no longer reaches back to the position
// says recovered:false, then gives what it has, then live.
func TestResumeTrimmed(t *testing.T) {
	t.Parallel()
	g := newGW(t, Config{Insecure: true}, gwOptions{})
	g.applyConfig(t, `namespaces: [{match: "h.*", history_size: 3}]`)
	a := g.dial(t, "", nil)
	a.mustOK(OpSubscribe, "h.t", nil)
	publishRange(t, g, "h.t", 1, 1)
	pos := a.expectNumbers("h.t", 1, 1).Pos
	a.c.Close()
	publishRange(t, g, "h.t", 2, 10)
	b := g.dial(t, "", nil)
	if ok := b.resume("h.t", pos); *ok.Recovered || *ok.Count != 3 {
		t.Fatalf("resume past the trimmed history: %+v, want recovered false, 3", ok)
	}
	b.expectNumbers("h.t", 8, 10)
	publishRange(t, g, "h.t", 11, 11)
	b.expectNumbers("h.t", 11, 11)
	if n := g.metric("recoveries", "not_recovered"); n != 1 {
		t.Errorf("recoveries{not_recovered} = %v, want 1", n)
	}
}

// TestResumeOnAnotherGateway: a client resumes on a new gateway (another
// Handler over another fanout client, same cluster) from the pos the first
// one gave it, after the first one stopped, and gets everything published
// in between exactly once, then live.
func TestResumeOnAnotherGateway(t *testing.T) {
	t.Parallel()
	ga := newHistGW(t, Config{Insecure: true})
	a := ga.dial(t, "", nil)
	a.mustOK(OpSubscribe, "h.g", nil)
	for i := 1; i <= 3; i++ {
		a.mustOK(OpPublish, "h.g", i) // published by gateway A's fanout client
	}
	pos := a.expectNumbers("h.g", 1, 3).Pos
	// Gateway B starts before A stops, as in a rolling deploy.
	gb := ga.another(t, Config{Insecure: true}, "127.0.0.1:0")
	if err := ga.gateway.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := a.read(10 * time.Second); !websocket.IsCloseError(err, CloseGoingAway) {
		t.Fatalf("client of the stopped gateway: %v, want close 1001", err)
	}
	for i := 4; i <= 8; i++ {
		if code, body := gb.post(t, "/api/publish/h.g", "", []byte(strconv.Itoa(i))); code != 200 {
			t.Fatalf("publish %d on B: %d %v", i, code, body)
		}
	}
	b := gb.dial(t, "", nil)
	if ok := b.resume("h.g", pos); !*ok.Recovered || *ok.Count != 5 {
		t.Fatalf("resume on B: %+v, want recovered 5", ok)
	}
	b.expectNumbers("h.g", 4, 8)
	publishRange(t, gb, "h.g", 9, 9)
	b.expectNumbers("h.g", 9, 9)
	b.expectNoMessage(300 * time.Millisecond)
}
