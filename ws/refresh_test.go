package ws

import (
	"testing"
	"time"
)

// TestRefresh: a refresh with a token of the same subject replaces the
// credential: the new claims apply at once (a subscription they no longer
// allow ends with an unsubscribed frame, before the ok; a publish the new
// claims allow goes through) and the expiry moves to the new exp, so the
// connection outlives its first token. A token for another subject is
// subject_mismatch, an expired or invalid one unauthorized, and neither
// changes anything.
func TestRefresh(t *testing.T) {
	t.Parallel()
	secret := []byte("refresh-secret")
	g := newGW(t, Config{JWTSecret: secret, APIKeys: []string{"key"}}, gwOptions{})
	first := token(t, secret, "ann", []string{"a.*", "b.*"}, nil, 2*time.Second)
	c := g.dial(t, first, nil)
	c.mustOK(OpSubscribe, "a.x", nil)
	c.mustOK(OpSubscribe, "b.x", nil)
	if f := c.call(map[string]any{"op": OpPSubscribe, "pattern": "b.*"}); f.Op != OpOK {
		t.Fatalf("psubscribe: %+v", f)
	}

	for _, tc := range []struct {
		what, tok, code string
	}{
		{"another subject", token(t, secret, "bob", []string{"*"}, nil, time.Hour), CodeSubjectMismatch},
		{"an expired token", expiredToken(t, secret, "ann"), CodeUnauthorized},
		{"garbage", "not-a-token", CodeUnauthorized},
		{"an API key", "key", CodeSubjectMismatch},
	} {
		if f := c.call(map[string]any{"op": OpRefresh, "token": tc.tok}); f.Op != OpError || f.Code != tc.code {
			t.Errorf("refresh with %s: %+v, want error %s", tc.what, f, tc.code)
		}
	}

	// Narrower claims, longer life: b.x and b.* end, a.x stays.
	second := token(t, secret, "ann", []string{"a.*"}, []string{"a.*"}, time.Hour)
	c.nextID++
	c.send(map[string]any{"op": OpRefresh, "token": second, "id": c.nextID})
	ended := map[string]bool{}
	for {
		f, err := c.read(10 * time.Second)
		if err != nil {
			t.Fatalf("after refresh: %v (ended %v)", err, ended)
		}
		if f.Op == OpOK {
			break
		}
		if f.Op != OpUnsubscribed || f.Code != CodeForbidden {
			t.Fatalf("before the ok: %+v", f)
		}
		ended[f.Channel+f.Pattern] = true
	}
	if len(ended) != 2 || !ended["b.x"] || !ended["b.*"] {
		t.Fatalf("ended %v, want b.x and the pattern", ended)
	}
	if got := g.metric("refreshes", "ok"); got != 1 {
		t.Errorf("refreshes ok = %v", got)
	}
	// The new publish claim applies; the old token's 2s expiry is gone.
	time.Sleep(2500 * time.Millisecond)
	c.mustOK(OpPublish, "a.x", 1)
	if m := c.message(10 * time.Second); m.Channel != "a.x" {
		t.Fatalf("message %+v", m)
	}
	g.post(t, "/api/publish/b.x", "key", []byte(`2`))
	g.post(t, "/api/publish/a.x", "key", []byte(`3`))
	if m := c.message(10 * time.Second); m.Channel != "a.x" || string(m.Data) != "3" {
		t.Fatalf("after the refresh: %+v (b.x should be gone)", m)
	}

	// Without a refresh the expiry still closes with 4001.
	short := g.dial(t, token(t, secret, "cid", []string{"a.*"}, nil, time.Second), nil)
	if ce := short.closeErr(10 * time.Second); ce == nil || ce.Code != CloseTokenExpired {
		t.Fatalf("close %v, want 4001", ce)
	}
}

// expiredToken is a token of sub that expired a minute ago.
func expiredToken(t *testing.T, secret []byte, sub string) string {
	t.Helper()
	s, err := NewToken(secret, TokenOptions{Subject: sub, TTL: time.Minute, Now: time.Now().Add(-2 * time.Minute)})
	if err != nil {
		t.Fatal(err)
	}
	return s
}
