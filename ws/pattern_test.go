package ws

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestPatternCovered: a claim glob covers a Redis pattern only when every
// channel the pattern can match also matches the claim.
func TestPatternCovered(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		claim, pattern string
		want           bool
	}{
		{"news.*", "news.*", true},
		{"news.*", "news.sport", true},
		{"news.*", "news.?", true},
		{"news.*", "news.[ab]*", true},
		{"news.*", "news.eu.*", true},
		{"*", "anything*", true},
		{"*", "*", true},
		{"**", "a?b", true},
		{"news.*", "news*", false},      // newsx
		{"news.*", "*", false},          // everything
		{"news.*", "news.", true},       // MatchGlob's * matches an empty run
		{"news.*", "new?.a", false},     // newx.a
		{"news.*", "news[.]x", false},   // a class is any byte
		{"news.a", "news.?", false},     // news.b
		{"news.a", "news.a", true},      // a literal pattern
		{"news.*", "news.\\*", true},    // an escaped star: the channel "news.*"
		{"news.\\*", "news.\\*", false}, // the claim's backslash is a literal byte
		{"a*b", "a?b", true},
		{"a*b", "a*", false},
		{"*.eu", "news.*.eu", true},
		{"*.eu", "news.*", false},
	} {
		if got := patternCovered(tc.claim, tc.pattern); got != tc.want {
			t.Errorf("patternCovered(%q, %q) = %v, want %v", tc.claim, tc.pattern, got, tc.want)
		}
	}
}

// TestPSubscribe: the authorization table over a real gateway (claims,
// namespace rules, API keys, anonymous clients), delivery with "pattern"
// in the frame over WebSocket and SSE, punsubscribe, and the subscription
// limit counting patterns.
func TestPSubscribe(t *testing.T) {
	t.Parallel()
	secret := []byte("pattern-secret")
	g := newGW(t, Config{JWTSecret: secret, APIKeys: []string{"key"}, MaxSubscriptions: 3}, gwOptions{})
	g.applyConfig(t, `namespaces: [{match: "secret.**", allow_subscribe: none}, {match: "public.**", allow_subscribe: anonymous}]`)
	news := token(t, secret, "ann", []string{"news.*", "chat.room1"}, nil, time.Hour)
	all := token(t, secret, "bob", []string{"*"}, nil, time.Hour)
	for _, tc := range []struct {
		who, cred, pattern, want string
	}{
		{"claim news.*", news, "news.*", OpOK},
		{"claim news.*", news, "news.eu.?", OpOK},
		{"claim news.*", news, "news*", CodeForbidden},
		{"claim news.*", news, "*", CodeForbidden},
		{"claim news.*", news, "chat.*", CodeForbidden},
		{"claim news.*", news, "chat.room1", OpOK}, // no wildcard: a channel
		{"claim *", all, "*", CodeForbidden},       // can match secret.x, whose namespace allows none
		{"claim *", all, "sec*", CodeForbidden},
		{"claim *", all, "news.*", OpOK},
		{"claim *", all, "secret.*", CodeForbidden},
		{"api key", "key", "*", CodeForbidden},
		{"api key", "key", "news.*", OpOK},
		{"claim *", all, "bad pattern", CodeBadRequest},
	} {
		c := g.dial(t, tc.cred, nil)
		f := c.call(map[string]any{"op": OpPSubscribe, "pattern": tc.pattern})
		got := f.Op
		if f.Op == OpError {
			got = f.Code
		}
		if got != tc.want {
			t.Errorf("%s psubscribe %q: %s (%s), want %s", tc.who, tc.pattern, got, f.Message, tc.want)
		}
		c.c.Close()
	}

	// Delivery, over WebSocket.
	c := g.dial(t, news, nil)
	if f := c.call(map[string]any{"op": OpPSubscribe, "pattern": "news.*"}); f.Op != OpOK {
		t.Fatalf("psubscribe: %+v", f)
	}
	if code, body := g.post(t, "/api/publish/news.eu", "key", []byte(`{"n":1}`)); code != 200 {
		t.Fatalf("publish: %d %v", code, body)
	}
	_, raw, err := c.c.ReadMessage()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(string(raw), `{"op":"message","pattern":"news.*","channel":"news.eu","data":{"n":1},"id":`) {
		t.Fatalf("pattern message %s", raw)
	}
	// The limit counts patterns: 1 pattern + 2 channels, then no more.
	c.mustOK(OpSubscribe, "news.a", nil)
	c.mustOK(OpSubscribe, "news.b", nil)
	if f := c.call(map[string]any{"op": OpPSubscribe, "pattern": "news.x*"}); f.Code != CodeLimit {
		t.Fatalf("a 4th subscription: %+v, want limit", f)
	}
	// punsubscribe: no more pattern messages (news.c is subscribed to by
	// no channel subscription).
	if f := c.call(map[string]any{"op": OpPUnsubscribe, "pattern": "news.*"}); f.Op != OpOK {
		t.Fatalf("punsubscribe: %+v", f)
	}
	g.post(t, "/api/publish/news.c", "key", []byte(`2`))
	g.post(t, "/api/publish/news.a", "key", []byte(`3`))
	if m := c.message(10 * time.Second); m.Channel != "news.a" || string(m.Data) != "3" {
		t.Fatalf("after punsubscribe: %+v", m)
	}

	// Anonymous: only where every namespace it may reach is anonymous,
	// which the default namespace never is here.
	if code, _ := g.get(t, "/sse?pattern=public.*", ""); code != http.StatusUnauthorized && code != http.StatusForbidden {
		t.Errorf("anonymous pattern public.*: %d, want a refusal", code)
	}

	// Over SSE.
	s := g.openSSE(t, "/sse?pattern=news.*&token="+news, nil)
	s.next(10*time.Second, func(e sseEvent) bool { return e.event == "subscribed" })
	g.post(t, "/api/publish/news.sse", "key", []byte(`4`))
	ev := s.next(10*time.Second, func(e sseEvent) bool { return e.event == OpMessage })
	var f struct{ Pattern, Channel string }
	json.Unmarshal([]byte(ev.data), &f)
	if f.Pattern != "news.*" || f.Channel != "news.sse" || ev.hasID {
		t.Fatalf("SSE pattern event %+v", ev)
	}
	if code, body := g.get(t, "/sse?pattern=*&token="+news, ""); code != 403 || body["code"] != CodeForbidden {
		t.Fatalf("SSE pattern * with claim news.*: %d %v", code, body)
	}
}

// A pattern that matches the gateways' own channels ($pm.*) never
// delivers their messages: join/leave events and server-API requests
// stay among the gateways.
func TestPatternSkipsReservedChannels(t *testing.T) {
	t.Parallel()
	g := newGW(t, Config{Insecure: true}, gwOptions{})
	c := g.dial(t, "", nil)
	if f := c.call(map[string]any{"op": OpPSubscribe, "pattern": "*"}); f.Op != OpOK {
		t.Fatalf("psubscribe *: %+v", f)
	}
	if f := c.call(map[string]any{"op": OpPSubscribe, "pattern": ReservedPrefix + "*"}); f.Code != CodeBadRequest {
		t.Fatalf("psubscribe %s*: %+v, want bad_request", ReservedPrefix, f)
	}
	ctx := context.Background()
	if err := g.client.Publish(ctx, ReservedPrefix+"control", []byte(`{"internal":true}`)); err != nil {
		t.Fatal(err)
	}
	if code, body := g.post(t, "/api/publish/news", "", []byte(`1`)); code != 200 {
		t.Fatalf("publish: %d %v", code, body)
	}
	if m := c.message(10 * time.Second); m.Channel != "news" {
		t.Fatalf("first message on pattern *: %+v, want news (not the reserved channel)", m)
	}
}
