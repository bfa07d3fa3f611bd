// Package freeport finds free loopback TCP ports for tests and local clusters.
package freeport

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
)

// lowest is the bottom of the range Get draws from: above the well-known
// and most registered service ports.
const lowest = 10000

// start and next place this process's walk over the range. Process-wide on
// purpose: the ports are a machine-wide resource, and one walk per process
// keeps its own tests from drawing the same port twice.
var (
	start = rand.IntN(1 << 20)
	next  atomic.Int64
)

// Get returns a TCP port on 127.0.0.1 that was free a moment ago.
//
// It takes the port from below the kernel's ephemeral range
// (net.ipv4.ip_local_port_range), not from the kernel's own port-0
// choice: tests stop servers and start them again on the same port (a
// restarted etcd member, redis-server or agent), and a port from the
// ephemeral range can meanwhile become the local end of any outgoing
// connection on the machine, which makes the restart fail with "address
// already in use". Below that range only another listener can take it.
//
// Within that range each process walks the ports in order from its own
// random starting point, and it reserves each port it hands out for its
// whole life with a lock on that port's byte of one file in the temp
// directory (see reserve): go test runs packages as parallel processes,
// and two walks that meet would otherwise pick the same port between one's
// check and its bind. That happened in CI even with random starting
// points: a run draws about a thousand ports over some twenty processes.
func Get() (int, error) { return GetN(1) }

// GetN returns the first of n consecutive TCP ports on 127.0.0.1 that were
// all free a moment ago, for programs that number their ports from a base
// (`pubmesh dev --base-port`). Get does not hand them out again in this
// process until its walk comes round.
func GetN(n int) (int, error) {
	if low := ephemeralLow(); low-lowest >= 1000+n {
		span := low - lowest
	walk:
		for range 200 {
			// This call owns the walk's next n steps; Get's next call
			// takes the step after them.
			first := (start + int(next.Add(int64(n))) - n + 1) % span
			if first+n > span {
				continue // the block would wrap round the range
			}
			p := lowest + first
			if !reserve(p, n) {
				continue // another process handed it out
			}
			for i := range n {
				if !Free(net.JoinHostPort("127.0.0.1", strconv.Itoa(p+i))) {
					continue walk // stays reserved: nobody should get it
				}
			}
			return p, nil
		}
	}
	if n != 1 {
		return 0, fmt.Errorf("freeport: no %d consecutive free ports below the ephemeral range", n)
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

// Use calls start with a port from Get, and again with a new one while
// start fails with an error that taken recognises, up to 5 attempts. Get
// reserves ports only against other callers of Get; a program that binds
// a port of its own choosing can still take one between Get's check and
// start's bind (seen in CI, cause not found), and a test should not fail
// for it.
func Use(start func(port int) error, taken func(error) bool) error {
	var err error
	for range 5 {
		var p int
		if p, err = Get(); err != nil {
			return err
		}
		if err = start(p); err == nil || !taken(err) {
			return err
		}
	}
	return err
}
