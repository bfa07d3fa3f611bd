package ws

import (
	"net"
	"net/url"
	"testing"
	"time"
)

// TestPublicURLReachable: a gateway listening on every address (0.0.0.0)
// registers a URL other machines can dial (no unspecified host, no
// loopback), with its port; one on 127.0.0.1 keeps its address.
func TestPublicURLReachable(t *testing.T) {
	t.Parallel()
	cfg := Config{APIKeys: []string{"k"}}
	a := newGW(t, cfg, gwOptions{})
	b := a.another(t, cfg, "0.0.0.0:0")
	waitFor(t, 10*time.Second, "both gateways in the registry", func() bool {
		gws, _ := a.reg.Gateways(t.Context())
		return len(gws) == 2
	})
	gws, err := a.reg.Gateways(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	bu, err := url.Parse(b.url) // the listener's own URL: http://0.0.0.0:PORT
	if err != nil {
		t.Fatal(err)
	}
	bPort := bu.Port()
	for _, g := range gws {
		u, err := url.Parse(g.URL)
		if err != nil {
			t.Fatalf("registered URL %q: %v", g.URL, err)
		}
		switch g.ID {
		case a.client.ID():
			if g.URL != a.url+"/" {
				t.Errorf("gateway on 127.0.0.1 registered %s, want %s/", g.URL, a.url)
			}
		case b.client.ID():
			if u.Port() != bPort {
				t.Errorf("registered %s, want port %s", g.URL, bPort)
			}
			ips, err := net.LookupIP(u.Hostname())
			if err != nil {
				t.Fatalf("registered %s: %v", g.URL, err)
			}
			for _, ip := range ips {
				if ip.IsUnspecified() || ip.IsLoopback() {
					t.Errorf("gateway on 0.0.0.0 registered %s (%s): other machines cannot dial it", g.URL, ip)
				}
			}
		}
	}
}
