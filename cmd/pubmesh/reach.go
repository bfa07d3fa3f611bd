package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/pubmesh/pubmesh/discovery"
)

// reachTimeout bounds one node's reachability probe.
const reachTimeout = time.Second

// probeNodes checks, in parallel, that each node's registered address
// answers as a Redis server from here: an entry in etcd proves only that an
// agent wrote it, not that clients can use the node (an --attach to a wrong
// address, an unreachable advertised address). It returns each unreachable
// node's error by id; a node missing from the map answered.
func probeNodes(ctx context.Context, nodes []discovery.Node) map[string]error {
	var (
		mu   sync.Mutex
		errs = map[string]error{}
		wg   sync.WaitGroup
	)
	for _, n := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := probeNode(ctx, n); err != nil {
				mu.Lock()
				errs[n.ID] = err
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return errs
}

// probeNode dials n and, for a plain-text node, reads one reply to PING.
// Any reply counts, an error included (NOAUTH from a node with a password):
// the address is a Redis that answers. A TLS node counts once it accepts
// the TCP connection; its handshake needs the client's certificates.
func probeNode(ctx context.Context, n discovery.Node) error {
	ctx, cancel := context.WithTimeout(ctx, reachTimeout)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", n.Addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	if n.TLS {
		return nil
	}
	deadline, _ := ctx.Deadline()
	conn.SetDeadline(deadline)
	if _, err := conn.Write([]byte("PING\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return fmt.Errorf("no reply to PING: %w", err)
	}
	switch line[0] {
	case '+', '-':
		return nil
	}
	return errors.New("not a Redis server (unexpected reply to PING)")
}
