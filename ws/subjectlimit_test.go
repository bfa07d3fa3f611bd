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
			s := newSubjectLimits(tt.rate, tt.burst, tt.max)
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
	if s := newSubjectLimits(-1, 0, 10); !s.allow("a", t0) || !s.allow("a", t0) {
		t.Fatal("a negative rate limits")
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
