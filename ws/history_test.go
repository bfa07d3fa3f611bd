package ws

import (
	"context"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"
)

// numbers returns the data of history messages, checking that each has
// the fields of a message frame.
func numbers(t *testing.T, channel string, ms []frame) string {
	t.Helper()
	var out []string
	for _, m := range ms {
		if m.Channel != channel || m.Pos == "" || m.TS == 0 || len(m.ID) < 3 {
			t.Fatalf("history message %+v lacks a field", m)
		}
		out = append(out, string(m.Data))
	}
	return strings.Join(out, ",")
}

// TestHistoryOp: the history op reads a channel's history, authorized as a
// subscribe: everything, the oldest limit and on from the reply's pos, the
// newest limit newest first, after a since; no_history for a channel
// without, bad_request for a bad position or limit, forbidden outside the
// token's claims.
func TestHistoryOp(t *testing.T) {
	t.Parallel()
	secret := []byte("hist-secret")
	g := newGW(t, Config{JWTSecret: secret}, gwOptions{})
	g.applyConfig(t, histDoc)
	publishRange(t, g, "h.a", 1, 10)
	c := g.dial(t, token(t, secret, "alice", []string{"h.*", "plain"}, nil, time.Hour), nil)
	hist := func(m map[string]any) frame {
		t.Helper()
		m["op"] = OpHistory
		f := c.call(m)
		if f.Op == OpHistory && (f.Channel != m["channel"] || f.Recovered == nil) {
			t.Fatalf("history reply %+v lacks channel or recovered", f)
		}
		return f
	}
	for _, tc := range []struct {
		name  string
		req   map[string]any
		want  string
		after string // the messages a read from the reply's pos gets
	}{
		{"everything", map[string]any{"channel": "h.a"}, "1,2,3,4,5,6,7,8,9,10", ""},
		{"oldest 3", map[string]any{"channel": "h.a", "limit": 3}, "1,2,3", "4,5,6,7,8,9,10"},
		{"newest 2", map[string]any{"channel": "h.a", "limit": 2, "reverse": true}, "10,9", ""},
		{"a limit over the maximum", map[string]any{"channel": "h.a", "limit": HistoryLimit + 1}, "1,2,3,4,5,6,7,8,9,10", ""},
	} {
		f := hist(tc.req)
		if f.Op != OpHistory || !*f.Recovered || numbers(t, "h.a", f.Messages) != tc.want || f.Pos == "" {
			t.Fatalf("%s: %+v, want %s", tc.name, f, tc.want)
		}
		if next := hist(map[string]any{"channel": "h.a", "since": f.Pos}); numbers(t, "h.a", next.Messages) != tc.after || !*next.Recovered {
			t.Fatalf("%s, then since its pos: %+v, want %q", tc.name, next, tc.after)
		}
	}
	// The pos of a message frame works as since too.
	pos5 := hist(map[string]any{"channel": "h.a", "limit": 5}).Messages[4].Pos
	if f := hist(map[string]any{"channel": "h.a", "since": pos5, "limit": 2}); numbers(t, "h.a", f.Messages) != "6,7" {
		t.Fatalf("since message 5's pos, limit 2: %+v", f)
	}
	for _, tc := range []struct {
		req  map[string]any
		code string
		msg  string
	}{
		{map[string]any{"channel": "plain"}, CodeNoHistory, `plain keeps no history: its namespace "**" has history_size 0`},
		{map[string]any{"channel": "h.a", "since": "nope"}, CodeBadRequest, "since is not a position"},
		{map[string]any{"channel": "h.a", "limit": -1}, CodeBadRequest, "limit must not be negative"},
		{map[string]any{"channel": "h.a", "limit": "3"}, CodeBadRequest, `"limit" has the wrong type`},
		{map[string]any{"channel": "other.a"}, CodeForbidden, "not allowed to subscribe to other.a"},
		{map[string]any{}, CodeBadRequest, "history needs a channel"},
	} {
		if f := hist(tc.req); f.Code != tc.code || !strings.Contains(f.Message, tc.msg) {
			t.Errorf("history %v: %+v, want %s %q", tc.req, f, tc.code, tc.msg)
		}
	}
	// A resume is authorized as a plain subscribe.
	if f := c.call(map[string]any{"op": OpSubscribe, "channel": "other.a", "since": pos5}); f.Code != CodeForbidden {
		t.Errorf("resume outside the claims: %+v, want forbidden", f)
	}
	if f := c.call(map[string]any{"op": OpSubscribe, "channel": "h.a", "since": "nope"}); f.Code != CodeBadRequest || !strings.Contains(f.Message, "since is not a position") {
		t.Errorf("resume from a bad position: %+v, want bad_request", f)
	}
	if n := g.metric("history_requests", "ws"); n != 10 {
		t.Errorf("history_requests{ws} = %v, want 10", n)
	}
}

// TestHistoryHTTP: GET /api/history/{channel} answers as the history op,
// authorized as a subscribe: 401 without a valid credential (unless the
// namespace lets anonymous clients subscribe), 403 outside the token's
// claims, 404 no_history for a channel without history, 400 for a bad
// since, limit or reverse.
func TestHistoryHTTP(t *testing.T) {
	t.Parallel()
	secret := []byte("hist-http")
	g := newGW(t, Config{JWTSecret: secret}, gwOptions{})
	g.applyConfig(t, `namespaces: [{match: "h.*", history_size: 100}, {match: "pub.*", history_size: 100, allow_subscribe: anonymous}]`)
	publishRange(t, g, "h.a", 1, 5)
	publishRange(t, g, "pub.a", 1, 2)
	alice := token(t, secret, "alice", []string{"h.*", "plain"}, nil, time.Hour)
	type body struct {
		Messages  []frame `json:"messages"`
		Pos       string  `json:"pos"`
		Recovered bool    `json:"recovered"`
	}
	get := func(path, bearer string) (int, body, map[string]any) {
		t.Helper()
		code, m := g.get(t, path, bearer)
		var b body
		if code == 200 {
			for _, x := range m["messages"].([]any) {
				o := x.(map[string]any)
				ts, _ := o["ts"].(float64)
				data := fmt.Sprint(o["data"])
				b.Messages = append(b.Messages, frame{Channel: fmt.Sprint(o["channel"]), Data: []byte(data),
					ID: []byte(strconv.Quote(fmt.Sprint(o["id"]))), TS: int64(ts), Pos: fmt.Sprint(o["pos"])})
			}
			b.Pos, _ = m["pos"].(string)
			b.Recovered, _ = m["recovered"].(bool)
		}
		return code, b, m
	}
	code, b, m := get("/api/history/h.a?limit=3", alice)
	if code != 200 || numbers(t, "h.a", b.Messages) != "1,2,3" || !b.Recovered || b.Pos == "" {
		t.Fatalf("GET limit 3: %d %v", code, m)
	}
	code, b, m = get("/api/history/h.a?since="+url.QueryEscape(b.Pos), alice)
	if code != 200 || numbers(t, "h.a", b.Messages) != "4,5" || !b.Recovered {
		t.Fatalf("GET since the pos of limit 3: %d %v", code, m)
	}
	code, b, m = get("/api/history/h.a?limit=1&reverse=true", alice)
	if code != 200 || numbers(t, "h.a", b.Messages) != "5" {
		t.Fatalf("GET the newest: %d %v", code, m)
	}
	// A namespace open to anonymous subscribers: no credential needed.
	code, b, m = get("/api/history/pub.a", "")
	if code != 200 || numbers(t, "pub.a", b.Messages) != "1,2" {
		t.Fatalf("GET without a credential in an anonymous namespace: %d %v", code, m)
	}
	for _, tc := range []struct {
		path, bearer string
		status       int
		code, msg    string
	}{
		{"/api/history/h.a", "", 401, CodeUnauthorized, "missing credential"},
		{"/api/history/h.a", "garbage", 401, CodeUnauthorized, "token refused"},
		{"/api/history/other.a", alice, 403, CodeForbidden, "not allowed to subscribe to other.a"},
		{"/api/history/plain", alice, 404, CodeNoHistory, `namespace "**" has history_size 0`},
		{"/api/history/h.a?since=nope", alice, 400, CodeBadRequest, "since is not a position"},
		{"/api/history/h.a?limit=x", alice, 400, CodeBadRequest, "limit must be a non-negative integer"},
		{"/api/history/h.a?limit=-2", alice, 400, CodeBadRequest, "limit must be a non-negative integer"},
		{"/api/history/h.a?reverse=maybe", alice, 400, CodeBadRequest, "reverse must be true or false"},
	} {
		code, _, m := get(tc.path, tc.bearer)
		if code != tc.status || m["code"] != tc.code || !strings.Contains(fmt.Sprint(m["message"]), tc.msg) {
			t.Errorf("GET %s: %d %v, want %d %s %q", tc.path, code, m, tc.status, tc.code, tc.msg)
		}
	}
	if n := g.metric("history_requests", "http"); n != 4 {
		t.Errorf("history_requests{http} = %v, want 4", n)
	}
}

// TestHistoryReplyBytes: a history reply stops after historyReplyBytes of
// messages, and its pos is then the last included message's, so a reader
// pages on without a gap.
func TestHistoryReplyBytes(t *testing.T) {
	t.Parallel()
	g := newGW(t, Config{Insecure: true}, gwOptions{})
	g.applyConfig(t, `namespaces: [{match: "h.*", history_size: 100}]`)
	big := `"` + strings.Repeat("x", 30<<10) + `"`
	const n = 40 // 1.2 MiB in all
	for i := 0; i < n; i++ {
		if err := g.client.Publish(context.Background(), "h.big", []byte(big)); err != nil {
			t.Fatal(err)
		}
	}
	c := g.dial(t, "", nil)
	c.c.SetReadLimit(4 << 20)
	var got int
	since := ""
	for pages := 0; got < n; pages++ {
		if pages == 3 {
			t.Fatalf("%d messages after 3 pages", got)
		}
		req := map[string]any{"op": OpHistory, "channel": "h.big"}
		if since != "" {
			req["since"] = since
		}
		f := c.call(req)
		if f.Op != OpHistory || len(f.Messages) == 0 {
			t.Fatalf("page %d: %+v", pages, f.Op)
		}
		if pages == 0 && len(f.Messages) == n {
			t.Fatalf("one reply held all %d messages (%d KiB)", n, n*30)
		}
		got += len(f.Messages)
		since = f.Pos
	}
	if got != n {
		t.Fatalf("paged through %d messages, want %d", got, n)
	}
}
