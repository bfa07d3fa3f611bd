// Package respguard checks what a Redis server sends before a RESP client
// library reads it. go-redis trusts the lengths on the wire: it allocates
// a bulk string, an array or a map of the announced size before the bytes
// arrive, reads a line until its newline however long it is, and recurses
// once per nesting level. A server that is not Redis (a wrong address in
// the registry, a proxy that speaks something else, a hostile host) can
// therefore make the client allocate gigabytes with a dozen bytes ("%4000000000"
// as the answer to HELLO gets the process killed for lack of memory), or
// overflow its stack with "*1\r\n" repeated. Conn follows the RESP stream
// and fails the connection with an *Error, before the reader sees it, when
// a reply goes beyond what Redis itself would send:
//
//   - a line (simple string, error, number, header) over 64 KiB;
//   - a bulk string, blob error or verbatim string over 512 MiB (Redis's own
//     proto-max-bulk-len);
//   - an array, map, set, push or attribute of more than 65 536 elements, or
//     more than 1 048 576 elements in one reply;
//   - aggregates nested more than 32 deep;
//   - a line that does not start with a RESP2 or RESP3 type byte.
//
// A Conn is for one reader at a time (as a go-redis connection is).
package respguard

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"strconv"
	"sync"
	"syscall"
)

// Limits; see the package documentation.
const (
	MaxLine          = 64 << 10
	MaxBulk          = 512 << 20
	MaxAggregate     = 1 << 16
	MaxReplyElements = 1 << 20
	MaxDepth         = 32
)

// Error is a reply that is not Redis: the connection is unusable.
type Error struct {
	Addr   string // the server's address
	Reason string // what was wrong, e.g. "an array of 4000000000 elements"
}

func (e *Error) Error() string {
	return fmt.Sprintf("respguard: %s answered something that is not a Redis reply: %s", e.Addr, e.Reason)
}

// Dialer wraps dial so that every connection it makes is checked (see
// New). onBad, if not nil, is called once per connection with the first
// violation.
func Dialer(dial func(ctx context.Context, network, addr string) (net.Conn, error), onBad func(*Error)) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return New(c, onBad), nil
	}
}

// Conn is a net.Conn whose reads are checked.
type Conn struct {
	net.Conn
	onBad func(*Error)

	mu  sync.Mutex // guards the parser state (Read is called by one goroutine at a time, but Close may race)
	err *Error     // set once a violation is seen: every later Read fails

	skip    int64 // payload bytes (with the CRLF) of a blob still to pass through
	line    []byte
	lineLen int
	stack   []int64 // elements still expected at each open aggregate level
	total   int64   // elements announced in the current top-level reply
}

// New wraps c: the result is a *Conn, or, when c exposes its socket
// (syscall.Conn, as a TCP connection does and a TLS one does not), a
// *Conn that exposes it too, so that go-redis can still peek (without
// reading) at idle pooled connections to find dead ones. onBad, if not
// nil, is called once with the first violation.
func New(c net.Conn, onBad func(*Error)) net.Conn {
	g := &Conn{Conn: c, onBad: onBad}
	if sc, ok := c.(syscall.Conn); ok {
		return &sysConn{Conn: g, sc: sc}
	}
	return g
}

// NetConn is the wrapped connection. go-redis unwraps connections this way
// (as it does crypto/tls.Conn) to peek, without reading, whether a pooled
// connection has data waiting, such as a TLS alert saying the server
// refused the client's certificate; reads still go through Read.
func (c *Conn) NetConn() net.Conn { return c.Conn }

// sysConn is a Conn over a connection with a raw socket.
type sysConn struct {
	*Conn
	sc syscall.Conn
}

func (s *sysConn) SyscallConn() (syscall.RawConn, error) { return s.sc.SyscallConn() }

// Read reads from the connection and checks the bytes; on a violation it
// returns the *Error (and so does every later Read), and the bytes of
// that Read are not handed out.
func (c *Conn) Read(p []byte) (int, error) {
	c.mu.Lock()
	if c.err != nil {
		err := c.err
		c.mu.Unlock()
		return 0, err
	}
	c.mu.Unlock()
	n, rerr := c.Conn.Read(p)
	c.mu.Lock()
	defer c.mu.Unlock()
	if e := c.scan(p[:n]); e != nil {
		c.err = e
		if c.onBad != nil {
			c.onBad(e)
		}
		return 0, e
	}
	return n, rerr
}

func (c *Conn) bad(format string, args ...any) *Error {
	return &Error{Addr: c.Conn.RemoteAddr().String(), Reason: fmt.Sprintf(format, args...)}
}

// scan advances the parser over b.
func (c *Conn) scan(b []byte) *Error {
	for len(b) > 0 {
		if c.skip > 0 {
			k := min(c.skip, int64(len(b)))
			c.skip -= k
			b = b[k:]
			if c.skip == 0 {
				c.done()
			}
			continue
		}
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			i = len(b)
		}
		if len(c.line) < 32 {
			c.line = append(c.line, b[:min(i, 32-len(c.line))]...)
		}
		c.lineLen += i
		if c.lineLen > MaxLine {
			return c.bad("a line longer than %d bytes", MaxLine)
		}
		if i == len(b) {
			return nil // the line goes on in the next read
		}
		b = b[i+1:]
		if e := c.header(); e != nil {
			return e
		}
		c.line, c.lineLen = c.line[:0], 0
	}
	return nil
}

// header handles one complete line (without its newline).
func (c *Conn) header() *Error {
	l := c.line
	if len(l) > 0 && l[len(l)-1] == '\r' {
		l = l[:len(l)-1]
	}
	if len(l) == 0 {
		return c.bad("an empty line")
	}
	switch l[0] {
	case '+', '-', ':', '_', ',', '#', '(':
		c.done()
	case '$', '!', '=':
		n, ok := length(l[1:], c.lineLen)
		switch {
		case !ok:
			return c.bad("a bulk length %q", l)
		case n > MaxBulk:
			return c.bad("a bulk string of %d bytes (Redis sends at most %d)", n, MaxBulk)
		case n < 0:
			c.done() // null bulk string
		default:
			c.skip = n + 2
		}
	case '*', '%', '~', '>', '|':
		n, ok := length(l[1:], c.lineLen)
		if !ok {
			return c.bad("an aggregate length %q", l)
		}
		if l[0] == '%' || l[0] == '|' {
			n *= 2 // keys and values
		}
		switch {
		case n > 2*MaxAggregate || (n > MaxAggregate && l[0] != '%' && l[0] != '|'):
			return c.bad("an aggregate of %d elements", n)
		case c.total+n > MaxReplyElements:
			return c.bad("more than %d elements in one reply", MaxReplyElements)
		case len(c.stack) >= MaxDepth:
			return c.bad("aggregates nested more than %d deep", MaxDepth)
		}
		c.total += max(n, 0)
		if n <= 0 {
			c.done() // empty or null aggregate
			return nil
		}
		if l[0] == '|' {
			// An attribute precedes the reply it annotates: its elements,
			// then that reply, complete it.
			n++
		}
		c.stack = append(c.stack, n)
	default:
		return c.bad("a line starting with %q, not a RESP type", l[0])
	}
	return nil
}

// done records that one reply or element is complete.
func (c *Conn) done() {
	for len(c.stack) > 0 {
		top := len(c.stack) - 1
		c.stack[top]--
		if c.stack[top] > 0 {
			return
		}
		c.stack = c.stack[:top]
	}
	c.total = 0 // a top-level reply is complete
}

// length parses a RESP length ("-1" for null). A header line is short;
// anything long is not a number Redis sends.
func length(b []byte, lineLen int) (int64, bool) {
	if lineLen > 32 || len(b) == 0 {
		return 0, false
	}
	n, err := strconv.ParseInt(string(b), 10, 64)
	if err != nil || n < -1 {
		return 0, false
	}
	return n, true
}
