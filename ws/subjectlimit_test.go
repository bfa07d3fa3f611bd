package ws

import (
	"fmt"
	"net/http"
	"testing"
	"time"
)

func TestSubjectLimits(t *testing.T) {
	t0 := time.Unix(1_800_000_000, 0)
	type call struct {
		subject string
		at      time.Duration // after t0
		want    bool
	}
	tests := []struct {
		name  string
		rate  float64
		burst int
		max   int
		calls []call
	}{
		{"burst, then refused", 1, 2, 10, []call{{"a", 0, true}, {"a", 0, true}, {"a", 0, false}}},
		{"subjects are separate", 1, 1, 10, []call{{"a", 0, true}, {"a", 0, false}, {"b", 0, true}, {"", 0, true}, {"", 0, false}}},
		{"the bucket refills at the rate", 2, 1, 10, []call{{"a", 0, true}, {"a", 100 * time.Millisecond, false}, {"a", 500 * time.Millisecond, true}}},
		{"a full table forgets idle subjects first", 1, 1, 2, []call{
			{"idle", 0, true}, {"busy", 5 * time.Second, true}, {"new", 5 * time.Second, true}, // idle refilled: dropped
			{"busy", 5 * time.Second, false}, // kept, with its empty bucket
		}},
		{"then the least recently seen", 1, 1, 2, []call{
			{"a", 0, true}, {"b", 100 * time.Millisecond, true}, {"c", 200 * time.Millisecond, true}, // a dropped
			{"b", 200 * time.Millisecond, false}, {"a", 300 * time.Millisecond, true},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newSubjects(tt.rate, tt.burst, -1, tt.max)
			for i, c := range tt.calls {
				if got := s.allow(c.subject, t0.Add(c.at)); got != c.want {
					t.Fatalf("call %d (%q at %s) = %v, want %v", i, c.subject, c.at, got, c.want)
				}
				if len(s.m) > tt.max {
					t.Fatalf("table holds %d subjects, at most %d", len(s.m), tt.max)
				}
			}
		})
	}
	if s := newSubjects(-1, 0, -1, 10); !s.allow("a", t0) || !s.allow("a", t0) {
		t.Fatal("a negative rate limits")
	}
}

// TestSubjectConnections: the connection cap per subject, and a subject
// with a connection open keeps its bucket however full the table is.
func TestSubjectConnections(t *testing.T) {
	t0 := time.Unix(1_800_000_000, 0)
	s := newSubjects(1, 1, 2, 2)
	if !s.acquire("a", t0) || !s.acquire("a", t0) || s.acquire("a", t0) {
		t.Fatal("the third connection of a subject with a cap of 2 was not refused")
	}
	if !s.acquire("b", t0) {
		t.Fatal("another subject was refused")
	}
	if !s.allow("a", t0) || s.allow("a", t0) {
		t.Fatal("a's bucket: want one publish, then refused")
	}
	// The table is full of connected subjects: new ones are added beside
	// them, and a keeps its empty bucket.
	for _, n := range []string{"c", "d", "e"} {
		if !s.allow(n, t0.Add(time.Hour)) {
			t.Fatalf("new subject %s refused", n)
		}
	}
	if s.allow("a", t0) {
		t.Fatal("a connected subject's bucket was reset by eviction")
	}
	s.release("a", t0)
	if !s.acquire("a", t0) {
		t.Fatal("a released place was not free again")
	}
	// Without a publish limit, a subject without connections is forgotten.
	u := newSubjects(-1, 0, 1, 10)
	u.acquire("a", t0)
	u.release("a", t0)
	if len(u.m) != 0 {
		t.Fatalf("table without a publish limit holds %d idle subjects", len(u.m))
	}
}

// HTTP publishes with a token are limited per subject like a WebSocket
// connection (429 rate_limited, Retry-After); another subject and an API
// key are not held back by it.
func TestHTTPPublishRateLimit(t *testing.T) {
	t.Parallel()
	secret := []byte("s3cret")
	g := newGW(t, Config{JWTSecret: secret, APIKeys: []string{"backend-key"}, PublishRate: 0.01, PublishBurst: 3}, gwOptions{})
	alice := token(t, secret, "alice", nil, []string{"chat.*"}, time.Hour)
	alice2 := token(t, secret, "alice", nil, []string{"chat.*"}, 2*time.Hour) // the same subject
	bob := token(t, secret, "bob", nil, []string{"chat.*"}, time.Hour)
	for i, tc := range []struct {
		bearer string
		want   int
	}{
		{alice, 200}, {alice, 200}, {alice2, 200}, {alice, 429}, {alice2, 429},
		{bob, 200}, {bob, 200}, {bob, 200}, {bob, 429},
		{"backend-key", 200}, {"backend-key", 200}, {"backend-key", 200}, {"backend-key", 200}, {"backend-key", 200},
	} {
		code, body := g.post(t, "/api/publish/chat.room", tc.bearer, []byte(fmt.Sprint(i)))
		if code != tc.want {
			t.Fatalf("publish %d: %d %v, want %d", i, code, body, tc.want)
		}
		if code == http.StatusTooManyRequests && body["code"] != CodeRateLimited {
			t.Fatalf("publish %d: body %v, want code %s", i, body, CodeRateLimited)
		}
	}
	if n := g.metric("errors", CodeRateLimited); n != 3 {
		t.Fatalf("rate_limited errors counted %v, want 3", n)
	}
}

// TestWSPublishLimitPerSubject (issue 10, item 2): the publish limit of a
// token subject is shared by all its WebSocket connections and its HTTP
// publishes, so N connections do not get N times the rate; another subject
// has its own.
func TestWSPublishLimitPerSubject(t *testing.T) {
	t.Parallel()
	secret := []byte("s3cret")
	const rate, burst = 0.01, 5
	g := newGW(t, Config{JWTSecret: secret, PublishRate: rate, PublishBurst: burst}, gwOptions{})
	alice := token(t, secret, "alice", nil, []string{"chat.*"}, time.Hour)
	alice2 := token(t, secret, "alice", nil, []string{"chat.*"}, 2*time.Hour) // another token, the same subject
	bob := token(t, secret, "bob", nil, []string{"chat.*"}, time.Hour)

	start := time.Now()
	accepted := func(conns ...*wsClient) int {
		n := 0
		for i := range 3 * burst {
			for _, c := range conns {
				switch f := c.request(OpPublish, "chat.room", i); {
				case f.Op == OpOK:
					n++
				case f.Code != CodeRateLimited:
					t.Fatalf("publish: %+v", f)
				}
			}
		}
		return n
	}
	a := []*wsClient{g.dial(t, alice, nil), g.dial(t, alice, nil), g.dial(t, alice2, nil)}
	got := accepted(a...)
	if most := burst + int(rate*time.Since(start).Seconds()); got < burst || got > most {
		t.Fatalf("3 connections of one subject got %d publishes accepted, want %d to %d (burst + rate×t, not ×3)", got, burst, most)
	}
	// The subject's HTTP publishes draw on the same bucket.
	if code, body := g.post(t, "/api/publish/chat.room", alice, []byte(`1`)); code != http.StatusTooManyRequests {
		t.Fatalf("HTTP publish of a subject over its limit: %d %v, want 429", code, body)
	}
	if got := accepted(g.dial(t, bob, nil)); got < burst {
		t.Fatalf("another subject got %d publishes accepted, want at least the burst %d", got, burst)
	}
}

// TestConnectionsPerSubject (issue 10, item 2): one token subject may hold
// MaxConnectionsPerSubject (default 100) WebSocket connections; the next
// is refused with 429 limit before the upgrade and counted; another
// subject is not affected, and a closed connection frees its place.
func TestConnectionsPerSubject(t *testing.T) {
	t.Parallel()
	secret := []byte("s3cret")
	g := newGW(t, Config{JWTSecret: secret, APIKeys: []string{"backend-key"}}, gwOptions{})
	alice := token(t, secret, "alice", []string{"*"}, nil, time.Hour)
	alice2 := token(t, secret, "alice", []string{"*"}, nil, 2*time.Hour)
	bob := token(t, secret, "bob", []string{"*"}, nil, time.Hour)

	var conns []*wsClient
	for i := range DefaultMaxConnectionsPerSubject {
		tok := alice
		if i%2 == 1 {
			tok = alice2
		}
		conns = append(conns, g.dial(t, tok, nil))
	}
	refused := func(tok string) {
		t.Helper()
		c, resp, err := g.tryDial(tok, nil)
		if err == nil {
			c.Close()
			t.Fatalf("connection %d of one subject was accepted", DefaultMaxConnectionsPerSubject+1)
		}
		if resp == nil || resp.StatusCode != http.StatusTooManyRequests {
			t.Fatalf("connection %d of one subject: %v (%+v), want HTTP 429", DefaultMaxConnectionsPerSubject+1, err, resp)
		}
	}
	refused(alice)
	refused(alice2)
	if n := g.metric("subject_connection_refusals"); n != 2 {
		t.Fatalf("refusals counted %v, want 2", n)
	}
	// Another subject, and an API key, are not affected.
	g.dial(t, bob, nil).mustOK(OpPing, "", nil)
	g.dial(t, "backend-key", nil).mustOK(OpPing, "", nil)
	// The existing connections work; one that closes frees a place.
	conns[0].mustOK(OpSubscribe, "news", nil)
	conns[0].c.Close()
	waitFor(t, 20*time.Second, "a place for alice again", func() bool {
		c, _, err := g.tryDial(alice, nil)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
}
