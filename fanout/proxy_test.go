package fanout_test

import (
	"io"
	"net"
	"sync"
	"testing"
)

// proxy is a TCP proxy on loopback that a test can cut, to partition one
// client from one server (a Redis node, or etcd) while everything else
// still reaches it. It is not a fake of the server: bytes pass unchanged.
type proxy struct {
	l      net.Listener
	target string

	mu    sync.Mutex // guards cut, conns
	cut   bool
	conns map[net.Conn]struct{} // client sides, open or held
	wg    sync.WaitGroup        // accept loop and pipes
}

// newProxy forwards a new loopback port to target until the test ends.
func newProxy(t *testing.T, target string) *proxy {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{l: l, target: target, conns: map[net.Conn]struct{}{}}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.close)
	return p
}

func (p *proxy) Addr() string { return p.l.Addr().String() }

func (p *proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.l.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		p.conns[c] = struct{}{}
		cut := p.cut
		p.mu.Unlock()
		if cut {
			continue // accepted, never answered: a partition, not a refusal
		}
		s, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		p.wg.Add(2)
		pipe := func(dst, src net.Conn) {
			defer p.wg.Done()
			io.Copy(dst, src)
			dst.Close()
			src.Close()
		}
		go pipe(s, c)
		go pipe(c, s)
	}
}

// Cut breaks every connection through the proxy, and holds new ones open
// without an answer until Heal.
func (p *proxy) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = true
	for c := range p.conns {
		c.Close()
		delete(p.conns, c)
	}
}

// Heal closes the connections held during the cut and forwards new ones
// again.
func (p *proxy) Heal() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = false
	for c := range p.conns {
		c.Close()
		delete(p.conns, c)
	}
}

func (p *proxy) close() {
	p.l.Close()
	p.Cut()
	p.wg.Wait()
}
