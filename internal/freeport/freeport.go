// Package freeport finds free loopback TCP ports for tests and local clusters.
package freeport

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
)

// lowest is the bottom of the range Get draws from: above the well-known
// and most registered service ports.
const lowest = 10000

// Get returns a TCP port on 127.0.0.1 that was free a moment ago.
//
// It draws the port at random from below the kernel's ephemeral range
// (net.ipv4.ip_local_port_range), not from the kernel's own port-0
// choice: tests stop servers and start them again on the same port (a
// restarted etcd member, redis-server or agent), and a port from the
// ephemeral range can meanwhile become the local end of any outgoing
// connection on the machine, which makes the restart fail with "address
// already in use". Below that range only another listener can take it.
func Get() (int, error) {
	if low := ephemeralLow(); low-lowest >= 1000 {
		for range 200 {
			p := lowest + rand.IntN(low-lowest)
			if Free(net.JoinHostPort("127.0.0.1", strconv.Itoa(p))) {
				return p, nil
			}
		}
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("freeport: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// ephemeralLow is the lowest port the kernel hands to outgoing
// connections, or 0 when it cannot be read.
func ephemeralLow() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return 0
	}
	low, err := strconv.Atoi(f[0])
	if err != nil {
		return 0
	}
	return low
}

// Free reports whether addr (host:port) can be bound right now.
func Free(addr string) bool {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return false
	}
	l.Close()
	return true
}
