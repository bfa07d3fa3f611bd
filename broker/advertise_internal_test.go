package broker

import (
	"errors"
	"net"
	"strconv"
	"testing"
)

// TestAdvertiseHost: a node bound to every address registers an address
// other machines can dial: its host name only when that resolves to one of
// its own non-loopback addresses, else an interface's global address, and
// never a loopback one.
func TestAdvertiseHost(t *testing.T) {
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
			if got := advertiseHost(tc.host, resolves(tc.lookup), tc.local); got != tc.want {
				t.Errorf("advertiseHost = %q, want %q", got, tc.want)
			}
		})
	}
}

// TestAdvertiseDefaultNotLoopback: on this machine, a node bound to
// 0.0.0.0 without Advertise registers a non-loopback address (this test
// machine's name resolves to 127.0.0.1, where the old default,
// <hostname>:port, sent other machines' clients to themselves).
func TestAdvertiseDefaultNotLoopback(t *testing.T) {
	c := Config{Bind: "0.0.0.0", Port: 7123}.withDefaults()
	if c.Advertise == "" {
		t.Skip("this machine has no global address")
	}
	host, port, err := net.SplitHostPort(c.Advertise)
	if err != nil || port != strconv.Itoa(7123) {
		t.Fatalf("advertise %q", c.Advertise)
	}
	addrs, err := net.LookupIP(host)
	if err != nil {
		t.Fatalf("advertise %q: %v", c.Advertise, err)
	}
	for _, ip := range addrs {
		if ip.IsLoopback() {
			t.Fatalf("bound to 0.0.0.0, the node advertises %s, which resolves to loopback %s", c.Advertise, ip)
		}
	}
	// An explicit Advertise is kept as given.
	if c := (Config{Bind: "0.0.0.0", Port: 7123, Advertise: "redis1.example:7123"}).withDefaults(); c.Advertise != "redis1.example:7123" {
		t.Errorf("explicit advertise became %q", c.Advertise)
	}
}
