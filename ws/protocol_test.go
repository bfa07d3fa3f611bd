package ws

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

func TestOps(t *testing.T) {
	t.Parallel()
	g := newGW(t, Config{Insecure: true}, gwOptions{})
	a := g.dial(t, "", nil)
	b := g.dial(t, "", nil)

	// ping, with a number id, a string id and none.
	if f := a.request(OpPing, "", nil); f.Op != OpOK || string(f.ID) != "1" {
		t.Fatalf("ping: %+v", f)
	}
	a.send(`{"op":"ping","id":"abc"}`)
	if f := a.next(5*time.Second, func(frame) bool { return true }); f.Op != OpOK || string(f.ID) != `"abc"` {
		t.Fatalf("ping with string id: %+v", f)
	}
	a.send(`{"op":"ping"}`)
	if f := a.next(5*time.Second, func(frame) bool { return true }); f.Op != OpOK || f.ID != nil {
		t.Fatalf("ping without id: %+v", f)
	}

	a.mustOK(OpSubscribe, "news", nil)
	a.mustOK(OpSubscribe, "news", nil) // again: ok, still one subscription
	b.mustOK(OpSubscribe, "news", nil)
	if n := g.h.hub.channelCount(); n != 1 {
		t.Fatalf("hub holds %d channels for one channel, want 1", n)
	}
	if n := g.metric("subscriptions"); n != 2 {
		t.Fatalf("subscriptions gauge %v, want 2", n)
	}

	// publish over WebSocket; both subscribers get the same frame.
	b.mustOK(OpPublish, "news", map[string]any{"hello": "world", "n": 1})
	before := time.Now().UnixMilli()
	for _, c := range []*wsClient{a, b} {
		m := c.message(10 * time.Second)
		if m.Channel != "news" || string(m.Data) != `{"hello":"world","n":1}` {
			t.Fatalf("message: %+v", m)
		}
		var id string
		if err := json.Unmarshal(m.ID, &id); err != nil || id == "" {
			t.Fatalf("message id %s is not a non-empty string", m.ID)
		}
		if m.TS <= 0 || m.TS > before+60_000 || m.TS < before-60_000 {
			t.Fatalf("message ts %d, now %d", m.TS, before)
		}
	}

	// unsubscribe: a keeps nothing, b still gets messages; the channel
	// stays open for b.
	a.mustOK(OpUnsubscribe, "news", nil)
	a.mustOK(OpUnsubscribe, "news", nil) // not subscribed: ok
	a.mustOK(OpPublish, "news", "second")
	if m := b.message(10 * time.Second); string(m.Data) != `"second"` {
		t.Fatalf("b got %+v", m)
	}
	if g.h.hub.channelCount() != 1 {
		t.Fatal("channel closed while b is subscribed")
	}
	b.mustOK(OpUnsubscribe, "news", nil)
	waitFor(t, 10*time.Second, "the last unsubscribe to close the fanout subscription", func() bool {
		return g.h.hub.channelCount() == 0 && g.metric("channels") == 0
	})
	a.mustOK(OpPublish, "news", "third")
	// Nothing arrives after unsubscribing: a ping round trip later, no
	// message frame is queued or in flight.
	time.Sleep(200 * time.Millisecond)
	for _, c := range []*wsClient{a, b} {
		c.mustOK(OpPing, "", nil)
		for _, f := range c.queue {
			if f.Op == OpMessage {
				t.Fatalf("message after unsubscribe: %+v", f)
			}
		}
	}
	if got := g.metric("messages_in", "ws"); got != 3 {
		t.Errorf("messages_in{ws} = %v, want 3", got)
	}
}

// TestMessageData checks how payloads published by Go services (not
// necessarily JSON) reach clients.
func TestMessageData(t *testing.T) {
	t.Parallel()
	g := newGW(t, Config{Insecure: true}, gwOptions{})
	c := g.dial(t, "", nil)
	c.mustOK(OpSubscribe, "raw", nil)
	for _, tc := range []struct{ payload, want string }{
		{`{"a":[1,2]}`, `{"a":[1,2]}`},
		{`42`, `42`},
		{`plain text`, `"plain text"`},
		{"bad \xff utf8", `"bad \ufffd utf8"`},
		{``, `""`},
		{`{"unterminated"`, `"{\"unterminated\""`},
	} {
		if err := g.client.Publish(context.Background(), "raw", []byte(tc.payload)); err != nil {
			t.Fatal(err)
		}
		m := c.message(10 * time.Second)
		if string(m.Data) != tc.want {
			t.Errorf("payload %q: data %s, want %s", tc.payload, m.Data, tc.want)
		}
	}
}

func TestErrorCodes(t *testing.T) {
	t.Parallel()
	secret := []byte("test-secret")
	g := newGW(t, Config{
		JWTSecret:        secret,
		MaxSubscriptions: 2,
		PublishRate:      1,
		PublishBurst:     2,
		MaxPublishBytes:  1024,
		MaxChannelBytes:  16,
	}, gwOptions{})
	tok := token(t, secret, "alice", []string{"news.*", "a", "b", "c"}, []string{"news.*"}, time.Hour)
	c := g.dial(t, tok, nil)

	expect := func(name string, send any, code string) {
		t.Helper()
		c.send(send)
		f := c.next(10*time.Second, func(f frame) bool { return f.Op != OpMessage })
		if f.Op != OpError || f.Code != code || f.Message == "" {
			t.Fatalf("%s: got %+v, want error %s", name, f, code)
		}
		// Errors do not drop the connection.
		c.mustOK(OpPing, "", nil)
	}
	for _, tc := range []struct {
		name string
		send string
	}{
		{"not JSON", `hello`},
		{"not an object", `[1,2]`},
		{"truncated", `{"op":"ping"`},
		{"unknown op", `{"op":"dance","id":7}`},
		{"missing op", `{"id":7}`},
		{"op not a string", `{"op":5,"id":7}`},
		{"id an object", `{"op":"ping","id":{}}`},
		{"missing channel", `{"op":"subscribe","id":7}`},
		{"space in channel", `{"op":"subscribe","channel":"a b","id":7}`},
		{"control char in channel", `{"op":"subscribe","channel":"a\u0001","id":7}`},
		{"channel too long", `{"op":"subscribe","channel":"news.0123456789abcdef","id":7}`},
		{"publish without data", `{"op":"publish","channel":"news.x","id":7}`},
	} {
		expect(tc.name, tc.send, CodeBadRequest)
	}
	// The id is echoed when it could be read.
	c.send(`{"op":"dance","id":"x1"}`)
	if f := c.next(5*time.Second, func(f frame) bool { return true }); string(f.ID) != `"x1"` {
		t.Fatalf("error reply id %s, want \"x1\"", f.ID)
	}
	// Binary frames.
	if err := c.c.WriteMessage(websocket.BinaryMessage, []byte(`{"op":"ping"}`)); err != nil {
		t.Fatal(err)
	}
	if f := c.next(5*time.Second, func(f frame) bool { return true }); f.Code != CodeBadRequest {
		t.Fatalf("binary frame: %+v", f)
	}

	expect("subscribe outside claims", map[string]any{"op": "subscribe", "channel": "sports", "id": 1}, CodeForbidden)
	expect("publish outside claims", map[string]any{"op": "publish", "channel": "a", "data": 1, "id": 1}, CodeForbidden)
	expect("data too large", map[string]any{"op": "publish", "channel": "news.x", "data": strings.Repeat("x", 2000), "id": 1}, CodeTooLarge)

	c.mustOK(OpSubscribe, "a", nil)
	c.mustOK(OpSubscribe, "b", nil)
	expect("third subscription", map[string]any{"op": "subscribe", "channel": "c", "id": 1}, CodeLimit)
	c.mustOK(OpUnsubscribe, "b", nil)
	c.mustOK(OpSubscribe, "c", nil) // room again

	// Rate: burst 2, then 1/s.
	c.mustOK(OpPublish, "news.x", 1)
	c.mustOK(OpPublish, "news.x", 2)
	expect("over the rate", map[string]any{"op": "publish", "channel": "news.x", "data": 3, "id": 1}, CodeRateLimited)

	for _, code := range []string{CodeBadRequest, CodeForbidden, CodeTooLarge, CodeLimit, CodeRateLimited} {
		if g.metric("errors", code) == 0 {
			t.Errorf("errors_total{code=%q} not counted", code)
		}
	}
}

func TestUnavailable(t *testing.T) {
	t.Parallel()
	g := newGW(t, Config{Insecure: true, OpTimeout: 2 * time.Second}, gwOptions{nodes: -1, fanout: fanoutQuick()})
	c := g.dial(t, "", nil)
	f := c.request(OpPublish, "news", 1)
	if f.Op != OpError || f.Code != CodeUnavailable {
		t.Fatalf("publish without nodes: %+v", f)
	}
	if code, body := g.post(t, "/api/publish/news", "", []byte(`1`)); code != 503 || body["code"] != CodeUnavailable {
		t.Fatalf("HTTP publish without nodes: %d %v", code, body)
	}
	if code, body := g.get(t, "/healthz", ""); code != 503 {
		t.Fatalf("healthz without nodes: %d %v", code, body)
	}
	// A node comes: health and publishing recover.
	g.addNode(t, "late")
	waitFor(t, 20*time.Second, "healthz to turn 200", func() bool { code, _ := g.get(t, "/healthz", ""); return code == 200 })
	c.mustOK(OpPublish, "news", 2)
}

func TestFrameTooLarge(t *testing.T) {
	t.Parallel()
	g := newGW(t, Config{Insecure: true, MaxFrameBytes: 1024}, gwOptions{})
	c := g.dial(t, "", nil)
	c.mustOK(OpPing, "", nil)
	c.send(`{"op":"ping","pad":"` + strings.Repeat("x", 2000) + `"}`)
	if ce := c.closeErr(10 * time.Second); ce.Code != CloseTooBig {
		t.Fatalf("close %d %q, want %d", ce.Code, ce.Text, CloseTooBig)
	}
	waitFor(t, 10*time.Second, "the connection to be gone", func() bool { return g.metric("connections") == 0 })
}
