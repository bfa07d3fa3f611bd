package ws

import (
	"context"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// TestAnonymousClients: a gateway with authentication lets a client
// without any credential in only while a namespace allows anonymous
// clients, and such a client only uses those namespaces; a credential
// that is present but invalid is always refused; anonymous namespaces let
// in clients whatever their claims. Removing the namespace refuses the
// next anonymous connection and the open one's next subscribe.
func TestAnonymousClients(t *testing.T) {
	t.Parallel()
	secret := []byte("s3cret")
	g := newGW(t, Config{JWTSecret: secret}, gwOptions{})
	status := func(u string, hdr http.Header) int {
		t.Helper()
		d := websocket.Dialer{HandshakeTimeout: 10 * time.Second}
		c, resp, err := d.Dial(u, hdr)
		if err == nil {
			c.Close()
			return http.StatusSwitchingProtocols
		}
		if resp == nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	refusedWithoutCredential := func(when string) {
		t.Helper()
		if got := status(g.wsURL, nil); got != http.StatusUnauthorized {
			t.Fatalf("%s: WebSocket without a credential: %d, want 401", when, got)
		}
		for _, ch := range []string{"open.a", "public.a"} {
			if code, body := g.post(t, "/api/publish/"+ch, "", []byte(`1`)); code != http.StatusUnauthorized {
				t.Fatalf("%s: HTTP publish to %s without a credential: %d %v, want 401", when, ch, code, body)
			}
		}
	}
	refusedWithoutCredential("by default")
	g.applyConfig(t, `namespaces: [{match: "public.*", allow_subscribe: anonymous}, {match: "open.*", allow_publish: anonymous}]`)

	anon := g.dial(t, "", nil)
	anon.mustOK(OpSubscribe, "public.a", nil)
	for _, r := range []struct{ op, channel string }{
		{OpSubscribe, "private.a"}, {OpSubscribe, "open.a"}, {OpPublish, "public.a"}, {OpPublish, "private.a"},
	} {
		if f := anon.request(r.op, r.channel, 1); f.Code != CodeForbidden {
			t.Errorf("anonymous %s %s: %+v, want forbidden", r.op, r.channel, f)
		}
	}
	anon.mustOK(OpPublish, "open.a", 1)
	if err := g.client.Publish(context.Background(), "public.a", []byte(`{"hi":1}`)); err != nil {
		t.Fatal(err)
	}
	if m := anon.message(10 * time.Second); m.Channel != "public.a" {
		t.Fatalf("anonymous subscriber got %+v", m)
	}
	if code, body := g.post(t, "/api/publish/open.a", "", []byte(`1`)); code != http.StatusOK {
		t.Errorf("HTTP publish to open.a without a credential: %d %v, want 200", code, body)
	}
	for _, ch := range []string{"public.a", "private.a"} {
		if code, body := g.post(t, "/api/publish/"+ch, "", []byte(`1`)); code != http.StatusUnauthorized {
			t.Errorf("HTTP publish to %s without a credential: %d %v, want 401", ch, code, body)
		}
	}
	// A present but invalid credential is never downgraded to anonymous.
	expired, err := NewToken(secret, TokenOptions{Subject: "alice", Subscribe: []string{"*"}, TTL: time.Hour, Now: time.Now().Add(-2 * time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	for name, d := range map[string]struct {
		query string
		hdr   http.Header
	}{
		"garbage token":       {"?token=garbage", nil},
		"empty token":         {"?token=", nil},
		"expired token":       {"?token=" + expired, nil},
		"Basic authorization": {"", http.Header{"Authorization": {"Basic Zm9vOmJhcg=="}}},
		"empty bearer":        {"", http.Header{"Authorization": {"Bearer "}}},
	} {
		if got := status(g.wsURL+d.query, d.hdr); got != http.StatusUnauthorized {
			t.Errorf("WebSocket with %s: %d, want 401", name, got)
		}
	}
	for _, cred := range []string{"garbage", expired} {
		if code, body := g.post(t, "/api/publish/open.a", cred, []byte(`1`)); code != http.StatusUnauthorized {
			t.Errorf("HTTP publish to open.a with a bad credential: %d %v, want 401", code, body)
		}
	}
	// anonymous means every client, whatever its claims.
	narrow := g.dial(t, token(t, secret, "bob", []string{"private.*"}, nil, time.Hour), nil)
	narrow.mustOK(OpSubscribe, "public.a", nil)
	narrow.mustOK(OpPublish, "open.a", 1)
	if f := narrow.request(OpPublish, "private.a", 1); f.Code != CodeForbidden {
		t.Errorf("publish outside the claims in a token namespace: %+v, want forbidden", f)
	}
	if n := g.metric("anonymous", "ws"); n != 1 {
		t.Errorf("anonymous WebSocket connections counted %v, want 1", n)
	}
	if n := g.metric("anonymous", "http"); n != 1 {
		t.Errorf("anonymous HTTP publishes counted %v, want 1", n)
	}

	// The anonymous namespaces go: the next anonymous connection gets 401,
	// the open one can no longer subscribe or publish.
	g.applyConfig(t, `namespaces: []`)
	refusedWithoutCredential("after the anonymous namespaces were removed")
	if f := anon.request(OpSubscribe, "public.b", nil); f.Code != CodeForbidden {
		t.Errorf("anonymous subscribe on the open connection after the change: %+v, want forbidden", f)
	}
	if f := anon.request(OpPublish, "open.a", 1); f.Code != CodeForbidden {
		t.Errorf("anonymous publish on the open connection after the change: %+v, want forbidden", f)
	}
}

// TestAnonymousHTTPPublishRate: HTTP publishes without a credential share
// one bucket per client address.
func TestAnonymousHTTPPublishRate(t *testing.T) {
	t.Parallel()
	g := newGW(t, Config{APIKeys: []string{"backend-key"}}, gwOptions{})
	g.applyConfig(t, `{gateway: {publish_rate: 0.01, publish_burst: 3}, namespaces: [{match: "open.*", allow_publish: anonymous}]}`)
	for i, want := range []int{200, 200, 200, 429, 429} {
		if code, body := g.post(t, "/api/publish/open.a", "", []byte(fmt.Sprint(i))); code != want {
			t.Fatalf("anonymous HTTP publish %d: %d %v, want %d", i, code, body, want)
		}
	}
	if code, body := g.post(t, "/api/publish/open.a", "backend-key", []byte(`1`)); code != http.StatusOK {
		t.Fatalf("API key HTTP publish: %d %v, want 200 (not limited)", code, body)
	}
}
