package hostaddr

import (
	"errors"
	"net"
	"testing"
)

// TestReachable: a server bound to every address registers an address
// other machines can dial: its host name only when that resolves to one of
// its own non-loopback addresses, else an interface's global address, and
// never a loopback one.
func TestReachable(t *testing.T) {
	ips := func(s ...string) []net.IP {
		var out []net.IP
		for _, a := range s {
			out = append(out, net.ParseIP(a))
		}
		return out
	}
	resolves := func(m map[string][]net.IP) func(string) ([]net.IP, error) {
		return func(h string) ([]net.IP, error) {
			if r, ok := m[h]; ok {
				return r, nil
			}
			return nil, errors.New("no such host")
		}
	}
	local := ips("127.0.0.1", "::1", "fe80::1", "10.0.0.5", "2001:db8::5")
	for _, tc := range []struct {
		name   string
		host   string
		lookup map[string][]net.IP
		local  []net.IP
		want   string
	}{
		{"name resolves to a local address", "web1", map[string][]net.IP{"web1": ips("10.0.0.5")}, local, "web1"},
		{"name resolves to 127.0.0.1 (the loopback trap)", "vm", map[string][]net.IP{"vm": ips("127.0.0.1")}, local, "10.0.0.5"},
		{"name resolves to Debian's 127.0.1.1", "deb", map[string][]net.IP{"deb": ips("127.0.1.1")}, local, "10.0.0.5"},
		{"name resolves to another machine's address", "web1", map[string][]net.IP{"web1": ips("10.9.9.9")}, local, "10.0.0.5"},
		{"name does not resolve", "web1", nil, local, "10.0.0.5"},
		{"no host name", "", nil, local, "10.0.0.5"},
		{"IPv6 only", "", nil, ips("::1", "fe80::1", "2001:db8::5"), "2001:db8::5"},
		{"loopback only", "vm", map[string][]net.IP{"vm": ips("127.0.0.1")}, ips("127.0.0.1", "::1"), ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Reachable(tc.host, resolves(tc.lookup), tc.local); got != tc.want {
				t.Errorf("Reachable = %q, want %q", got, tc.want)
			}
		})
	}
}
