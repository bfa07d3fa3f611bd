package fanout

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
	"time"
)

// subConn is the client's subscription connection to one node, spoken
// without go-redis: the message stream is nearly all a client reads, and
// reading it with our own reader (respreader.go) costs no allocation but
// the message the subscribers keep. go-redis still does every other
// command (publish, history). The subscription loop (subloop.go) dials it,
// authenticates, checks the node's run, writes SUBSCRIBE, UNSUBSCRIBE and
// fence PINGs; the node's receive goroutine is its only reader.
type subConn struct {
	conn    net.Conn
	rd      *respReader
	timeout time.Duration // of each write, and of the handshake

	wmu  sync.Mutex // guards wbuf and writes
	wbuf []byte

	closeOnce sync.Once
	done      chan struct{} // closed by close: a fence waiting on it fails at once
}

// errSubClosed is a command on a subscription connection that broke.
var errSubClosed = errors.New("fanout: subscription connection closed")

// dialSub connects to the node and runs the handshake: AUTH when the
// client has a password, then, for a node registered with its Redis
// run_id, INFO server to check that the Redis there is still that run.
func (nc *nodeConn) dialSub(ctx context.Context) (*subConn, error) {
	c := nc.c
	dctx, cancel := context.WithTimeout(ctx, c.cfg.DialTimeout)
	conn, err := nc.dial(dctx, "tcp", nc.node.Addr)
	cancel()
	if err != nil {
		return nil, err
	}
	sc := &subConn{conn: conn, rd: newRespReader(conn, nc.node.Addr), timeout: c.cfg.PublishTimeout, done: make(chan struct{})}
	if err := sc.handshake(nc); err != nil {
		sc.close()
		return nil, err
	}
	return sc, nil
}

// tlsVerdict is how long a new TLS connection waits for the node to
// refuse its certificate before the first command: with TLS 1.3 the
// client's handshake ends before the server has checked the client's
// certificate, and a command written meanwhile can make the server's
// socket reset the connection, so that the client reads "connection
// reset" instead of the alert that says why.
const tlsVerdict = 25 * time.Millisecond

func (sc *subConn) handshake(nc *nodeConn) error {
	c := nc.c
	defer sc.conn.SetDeadline(time.Time{})
	if _, ok := sc.conn.(*tls.Conn); ok {
		sc.conn.SetReadDeadline(time.Now().Add(tlsVerdict))
		var b [1]byte
		n, err := sc.conn.Read(b[:])
		var ne net.Error
		switch {
		case n > 0:
			return fmt.Errorf("%w before any command", errUnexpectedReply)
		case err != nil && !(errors.As(err, &ne) && ne.Timeout()):
			return err
		}
	}
	sc.conn.SetDeadline(time.Now().Add(sc.timeout))
	if c.cfg.Password != "" {
		args := []string{"AUTH", c.cfg.Password}
		if c.cfg.Username != "" {
			args = []string{"AUTH", c.cfg.Username, c.cfg.Password}
		}
		if err := sc.write(args...); err != nil {
			return err
		}
		if err := sc.rd.next(); err != nil {
			return err
		}
		switch sc.rd.kind {
		case '+':
		case '-':
			return errReply(sc.rd.str)
		default:
			return fmt.Errorf("%w to AUTH", errUnexpectedReply)
		}
	}
	if isRunID(nc.node.RunID) {
		if err := sc.write("INFO", "server"); err != nil {
			return err
		}
		if err := sc.rd.next(); err != nil {
			return err
		}
		switch {
		case sc.rd.kind == '-':
			return fmt.Errorf("fanout: check run_id: %w", errReply(sc.rd.str))
		case sc.rd.kind != '$' || sc.rd.str == nil:
			return fmt.Errorf("fanout: check run_id: %w to INFO", errUnexpectedReply)
		}
		if err := runIDMatches(string(sc.rd.str), nc.node.RunID); err != nil {
			return err
		}
	}
	return nil
}

// write sends one command; concurrent writers are serialized.
func (sc *subConn) write(args ...string) error {
	sc.wmu.Lock()
	defer sc.wmu.Unlock()
	b := sc.wbuf[:0]
	b = append(b, '*')
	b = strconv.AppendInt(b, int64(len(args)), 10)
	b = append(b, '\r', '\n')
	for _, a := range args {
		b = append(b, '$')
		b = strconv.AppendInt(b, int64(len(a)), 10)
		b = append(b, '\r', '\n')
		b = append(b, a...)
		b = append(b, '\r', '\n')
	}
	if cap(b) <= 64<<10 {
		sc.wbuf = b
	}
	sc.conn.SetWriteDeadline(time.Now().Add(sc.timeout))
	if _, err := sc.conn.Write(b); err != nil {
		sc.close() // the reader sees it and the loop dials again
		return err
	}
	return nil
}

func (sc *subConn) close() {
	sc.closeOnce.Do(func() {
		sc.conn.Close()
		close(sc.done)
	})
}

// subscription reply kinds, compared without converting to strings.
var (
	kindMessage  = []byte("message")
	kindPMessage = []byte("pmessage")
	kindPong     = []byte("pong")
	kindSub      = []byte("subscribe")
	kindPSub     = []byte("psubscribe")
)
