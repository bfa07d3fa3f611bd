package ws

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"net/http"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/pubmesh/pubmesh/fanout"
)

func token(t testing.TB, key any, sub string, subscribe, publish []string, ttl time.Duration) string {
	t.Helper()
	s, err := NewToken(key, TokenOptions{Subject: sub, Subscribe: subscribe, Publish: publish, TTL: ttl})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// fanoutQuick makes a fanout client give up quickly when no node is ready.
func fanoutQuick() fanout.Config {
	return fanout.Config{WaitReady: 300 * time.Millisecond}
}

func TestMatchGlob(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		pattern, name string
		want          bool
	}{
		{"news.*", "news.eu", true},
		{"news.*", "news.eu.fr", true},
		{"news.*", "news.", true},
		{"news.*", "news", false},
		{"news.*", "newsy", false},
		{"*", "anything", true},
		{"*.eu", "news.eu", true},
		{"*.eu", "news.us", false},
		{"a*b*c", "aXXbYYc", true},
		{"a*b*c", "aXXbYY", false},
		{"exact", "exact", true},
		{"exact", "exactly", false},
		{"", "", true},
		{"**", "x", true},
	} {
		if got := MatchGlob(tc.pattern, tc.name); got != tc.want {
			t.Errorf("MatchGlob(%q, %q) = %v, want %v", tc.pattern, tc.name, got, tc.want)
		}
	}
}

func TestNoAuthRefusesToStart(t *testing.T) {
	t.Parallel()
	g := newGW(t, Config{Insecure: true}, gwOptions{})
	if _, err := NewHandler(g.client, Config{}); err != ErrNoAuth {
		t.Fatalf("NewHandler without auth: %v, want ErrNoAuth", err)
	}
}

func TestAuth(t *testing.T) {
	t.Parallel()
	secret := []byte("s3cret")
	g := newGW(t, Config{JWTSecret: secret, APIKeys: []string{"backend-key"}}, gwOptions{})
	alice := token(t, secret, "alice", []string{"news.*"}, []string{"chat.*"}, time.Hour)

	dialStatus := func(tok string, hdr http.Header) int {
		t.Helper()
		c, resp, err := g.tryDial(tok, hdr)
		if err == nil {
			c.Close()
			return 101
		}
		if resp == nil {
			t.Fatalf("dial: %v", err)
		}
		return resp.StatusCode
	}
	expired, err := NewToken(secret, TokenOptions{Subject: "alice", Subscribe: []string{"*"}, TTL: time.Minute, Now: time.Now().Add(-time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	forged := token(t, []byte("not-the-secret"), "alice", []string{"*"}, []string{"*"}, time.Hour)
	none, err := jwt.NewWithClaims(jwt.SigningMethodNone, Claims{
		RegisteredClaims: jwt.RegisteredClaims{Subject: "alice", ExpiresAt: jwt.NewNumericDate(time.Now().Add(time.Hour))},
		Subscribe:        []string{"*"},
	}).SignedString(jwt.UnsafeAllowNoneSignatureType)
	if err != nil {
		t.Fatal(err)
	}
	noExp, err := jwt.NewWithClaims(jwt.SigningMethodHS256, Claims{
		RegisteredClaims: jwt.RegisteredClaims{Subject: "alice"}, Subscribe: []string{"*"},
	}).SignedString(secret)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		tok    string
		hdr    http.Header
		want   int
		reason string
	}{
		{"valid in query", alice, nil, 101, ""},
		{"valid in header", "", http.Header{"Authorization": {"Bearer " + alice}}, 101, ""},
		{"API key", "backend-key", nil, 101, ""},
		{"missing", "", nil, 401, "missing"},
		{"expired", expired, nil, 401, "expired"},
		{"forged", forged, nil, 401, "invalid"},
		{"alg none", none, nil, 401, "invalid"},
		{"no exp", noExp, nil, 401, "invalid"},
		{"garbage", "not.a.token", nil, 401, "invalid"},
		{"wrong scheme", "", http.Header{"Authorization": {"Basic " + alice}}, 401, "missing"},
	} {
		before := 0.0
		if tc.reason != "" {
			before = g.metric("auth_failures", tc.reason)
		}
		if got := dialStatus(tc.tok, tc.hdr); got != tc.want {
			t.Errorf("%s: HTTP %d, want %d", tc.name, got, tc.want)
		}
		if tc.reason != "" && g.metric("auth_failures", tc.reason) != before+1 {
			t.Errorf("%s: auth_failures{reason=%q} not counted", tc.name, tc.reason)
		}
	}

	// Channels: alice may subscribe to news.* and publish to chat.* only.
	c := g.dial(t, alice, nil)
	c.mustOK(OpSubscribe, "news.eu", nil)
	for _, tc := range []struct{ op, ch string }{
		{OpSubscribe, "chat.room"}, {OpSubscribe, "news"}, {OpSubscribe, "sports"},
		{OpPublish, "news.eu"}, {OpPublish, "sports"},
	} {
		if f := c.request(tc.op, tc.ch, 1); f.Code != CodeForbidden {
			t.Errorf("%s %s: %+v, want forbidden", tc.op, tc.ch, f)
		}
	}
	c.mustOK(OpPublish, "chat.room", "hi")

	// HTTP API: API key may publish anywhere, the token only to chat.*.
	if code, body := g.post(t, "/api/publish/news.eu", "backend-key", []byte(`{"from":"backend"}`)); code != 200 {
		t.Fatalf("publish with API key: %d %v", code, body)
	}
	if m := c.message(10 * time.Second); string(m.Data) != `{"from":"backend"}` {
		t.Fatalf("got %+v", m)
	}
	for _, tc := range []struct {
		bearer, channel string
		want            int
	}{
		{"", "news.eu", 401},
		{"wrong-key", "news.eu", 401},
		{forged, "chat.room", 401},
		{expired, "chat.room", 401},
		{alice, "news.eu", 403},
		{alice, "chat.room", 200},
	} {
		if code, body := g.post(t, "/api/publish/"+tc.channel, tc.bearer, []byte(`1`)); code != tc.want {
			t.Errorf("POST %s with %.12q: %d %v, want %d", tc.channel, tc.bearer, code, body, tc.want)
		}
	}
	// The node list needs a credential too.
	if code, _ := g.get(t, "/api/nodes", ""); code != 401 {
		t.Errorf("GET /api/nodes without credential: %d", code)
	}
	if code, _ := g.get(t, "/api/nodes", alice); code != 200 {
		t.Errorf("GET /api/nodes with token: %d", code)
	}
}

func TestAuthPublicKeys(t *testing.T) {
	t.Parallel()
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	ecKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		priv any
		pub  any
	}{
		{"RS256", rsaKey, &rsaKey.PublicKey},
		{"ES256", ecKey, &ecKey.PublicKey},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			// Round trip the public key through PEM as the flag does.
			der, err := x509.MarshalPKIXPublicKey(tc.pub)
			if err != nil {
				t.Fatal(err)
			}
			pub, err := ParsePublicKeyPEM(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
			if err != nil {
				t.Fatal(err)
			}
			g := newGW(t, Config{JWTPublicKey: pub}, gwOptions{})
			c := g.dial(t, token(t, tc.priv, "bob", []string{"x"}, nil, time.Hour), nil)
			c.mustOK(OpSubscribe, "x", nil)
			// An HS256 token "signed" with the public key's bytes (the
			// classic algorithm confusion) and one with an unrelated
			// secret are refused.
			for _, bad := range []string{
				token(t, der, "bob", []string{"x"}, nil, time.Hour),
				token(t, []byte("whatever"), "bob", []string{"x"}, nil, time.Hour),
			} {
				if _, resp, err := g.tryDial(bad, nil); err == nil || resp == nil || resp.StatusCode != 401 {
					t.Errorf("HS256 token against a %s key: %v", tc.name, err)
				}
			}
		})
	}
}

func TestTokenExpiresWhileConnected(t *testing.T) {
	t.Parallel()
	secret := []byte("k")
	g := newGW(t, Config{JWTSecret: secret}, gwOptions{})
	// exp has one-second precision: this token expires within 1 to 2 s.
	c := g.dial(t, token(t, secret, "carol", []string{"*"}, nil, 2*time.Second), nil)
	c.mustOK(OpSubscribe, "news", nil)
	if ce := c.closeErr(15 * time.Second); ce.Code != CloseTokenExpired || ce.Text != "token expired" {
		t.Fatalf("close %d %q, want %d token expired", ce.Code, ce.Text, CloseTokenExpired)
	}
}

func TestOrigin(t *testing.T) {
	t.Parallel()
	g := newGW(t, Config{Insecure: true}, gwOptions{})
	host := g.url[len("http://"):]
	for _, tc := range []struct {
		origin string
		ok     bool
	}{
		{"", true}, // not a browser
		{"http://" + host, true},
		{"http://evil.example", false},
		{"null", false},
	} {
		hdr := http.Header{}
		if tc.origin != "" {
			hdr.Set("Origin", tc.origin)
		}
		c, resp, err := g.tryDial("", hdr)
		if tc.ok != (err == nil) {
			t.Errorf("origin %q: err %v", tc.origin, err)
		}
		if err == nil {
			c.Close()
		} else if resp == nil || resp.StatusCode != 403 {
			t.Errorf("origin %q: want 403, got %v", tc.origin, resp)
		}
	}
	if g.metric("auth_failures", "origin") != 2 {
		t.Errorf("origin refusals counted %v, want 2", g.metric("auth_failures", "origin"))
	}

	g2 := newGW(t, Config{Insecure: true, AllowOrigins: []string{"https://app.example.com", "https://*.example.org"}}, gwOptions{})
	for _, tc := range []struct {
		origin string
		ok     bool
	}{
		{"https://app.example.com", true},
		{"https://a.example.org", true},
		{"https://a.b.example.org", true},
		{"http://a.example.org", false},
		{"https://example.org", false},
		{"https://app.example.com.evil.net", false},
		{"http://" + g2.url[len("http://"):], false}, // the list replaces the same-origin default
	} {
		c, _, err := g2.tryDial("", http.Header{"Origin": {tc.origin}})
		if tc.ok != (err == nil) {
			t.Errorf("allow-list, origin %q: err %v", tc.origin, err)
		}
		if err == nil {
			c.Close()
		}
	}
}
