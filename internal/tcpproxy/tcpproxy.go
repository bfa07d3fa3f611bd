// Package tcpproxy is a loopback TCP proxy that tests put between one client
// and one server (a Redis node, etcd, a gateway) to cut, freeze or redirect
// that one path while everything else still reaches the server. It is not a
// fake of the server: bytes pass unchanged.
package tcpproxy

import (
	"net"
	"sync"
	"sync/atomic"
	"testing"
)

// Proxy forwards the connections it accepts to a target. Safe for
// concurrent use.
type Proxy struct {
	l        net.Listener
	accepted atomic.Int64

	mu     sync.Mutex // guards target, cut, held, links
	target string
	cut    bool
	held   []net.Conn // accepted during a cut: open, never answered
	links  []*link
	wg     sync.WaitGroup // accept loop and pipes
}

// link is one forwarded connection.
type link struct {
	in, out net.Conn
	frozen  atomic.Bool
}

// New forwards a new loopback port to target until the test ends.
func New(t testing.TB, target string) *Proxy {
	t.Helper()
	p, err := Start(target)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p
}

// Start forwards a new loopback port to target until Close.
func Start(target string) (*Proxy, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &Proxy{l: l, target: target}
	p.wg.Add(1)
	go p.accept()
	return p, nil
}

// Addr is the proxy's host:port, for the client to dial.
func (p *Proxy) Addr() string { return p.l.Addr().String() }

// Accepted counts the connections accepted so far.
func (p *Proxy) Accepted() int64 { return p.accepted.Load() }

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		in, err := p.l.Accept()
		if err != nil {
			return
		}
		p.accepted.Add(1)
		p.mu.Lock()
		if p.cut {
			// Accepted, never answered: a partition, not a refusal.
			p.held = append(p.held, in)
			p.mu.Unlock()
			continue
		}
		target := p.target
		p.mu.Unlock()
		out, err := net.Dial("tcp", target)
		if err != nil {
			in.Close()
			continue
		}
		k := &link{in: in, out: out}
		p.mu.Lock()
		p.links = append(p.links, k)
		p.mu.Unlock()
		p.wg.Add(2)
		go p.pipe(k, in, out)
		go p.pipe(k, out, in)
	}
}

func (p *Proxy) pipe(k *link, src, dst net.Conn) {
	defer p.wg.Done()
	defer dst.Close()
	defer src.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 && !k.frozen.Load() {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// closeLinks closes every forwarded connection; called with mu held.
func (p *Proxy) closeLinks() {
	for _, k := range p.links {
		k.in.Close()
		k.out.Close()
	}
	p.links = nil
}

// Cut breaks every connection through the proxy, and holds new ones open
// without an answer until Heal: the client is partitioned from the target.
func (p *Proxy) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = true
	p.closeLinks()
}

// Heal closes the connections held during the cut and forwards new ones
// again.
func (p *Proxy) Heal() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = false
	for _, c := range p.held {
		c.Close()
	}
	p.held = nil
}

// Freeze makes the connections open now a black hole: bytes are read and
// dropped both ways and nothing is closed, as on a half-open TCP
// connection. Connections accepted later are forwarded.
func (p *Proxy) Freeze() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, k := range p.links {
		k.frozen.Store(true)
	}
}

// Redirect sends new connections to target and closes the current ones.
func (p *Proxy) Redirect(target string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.target = target
	p.closeLinks()
}

// Close stops the proxy and closes every connection through it.
func (p *Proxy) Close() {
	p.l.Close()
	p.mu.Lock()
	p.closeLinks()
	for _, c := range p.held {
		c.Close()
	}
	p.held = nil
	p.mu.Unlock()
	p.wg.Wait()
}
