package broker

import (
	"net"
	"strconv"
	"testing"
)

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
