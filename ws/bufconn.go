package ws

import (
	"bufio"
	"bytes"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
)

// Why this file exists: gorilla/websocket writes every frame to the
// net.Conn with its own Write call, so a client with 50 queued messages
// costs 50 syscalls (and 50 TLS records). Batching several messages into
// one WebSocket message (newline-separated, as gorilla's chat example does)
// would save them but change the protocol: one JSON object per frame is
// what every client, browser or not, can parse without help. So the
// gateway keeps one frame per message and instead hands gorilla a net.Conn
// that buffers while the connection's writer drains its queue, and writes
// the whole batch at once (endBatch). PreparedMessage was the other option;
// it saves re-framing a shared message per connection, which is cheap
// (a few header bytes and a copy), but not the syscall per frame, which is
// what costs. Since then the writer frames messages itself (frame.go):
// without compression it hands bufConn whole frames (writeFrame), and
// gorilla writes only control frames, compressed frames and the
// handshake.

// writerPool holds the batch buffers; a connection holds one only while
// it writes, so idle connections cost none.
var writerPool = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 16<<10) }}

// bufConn is the net.Conn under a WebSocket connection. Inside a batch
// (between beginBatch and endBatch, called by the connection's writer
// goroutine only) writes collect in a buffer; outside one they go straight
// to the socket, so writes from elsewhere (the handshake response, the
// close frame gorilla sends itself on a protocol error) are never held
// back. A write from another goroutine during a batch joins the batch.
type bufConn struct {
	net.Conn

	mu sync.Mutex    // guards w, handshook, deflate and closeSent; held while writing
	w  *bufio.Writer // non-nil inside a batch

	// handshook is set by the first write, gorilla's handshake response;
	// deflate says whether it accepted permessage-deflate.
	handshook, deflate bool
	// closeSent is set once gorilla has written a close frame (on its
	// own, after a protocol error, or for the writer): no data frame may
	// follow it (RFC 6455 5.5.1), so writeFrame refuses from then on, as
	// gorilla's own writes do.
	closeSent bool

	// deadlineCap, once non-zero (unix nanoseconds), caps every write
	// deadline: a closing connection stops waiting for a stuck client.
	deadlineCap atomic.Int64
}

// Write is gorilla's: each call is the handshake response or one whole
// frame (gorilla writes a control frame, a prepared message or a
// compressed frame with one Write; writeFrame carries the uncompressed
// data frames), so a close frame is recognised by its first byte.
func (b *bufConn) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.handshook {
		b.handshook = true
		b.deflate = bytes.Contains(p, []byte("\r\nSec-WebSocket-Extensions: permessage-deflate"))
	} else if len(p) > 0 && p[0] == 0x80|closeOpcode {
		b.closeSent = true
	}
	return b.write(p)
}

// closeOpcode is a close frame's opcode (RFC 6455 5.5.1).
const closeOpcode = 8

// writeFrame writes one data frame for the connection's writer: head,
// then body (either may be empty).
func (b *bufConn) writeFrame(head, body []byte) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closeSent {
		return websocket.ErrCloseSent
	}
	if len(head) > 0 {
		if _, err := b.write(head); err != nil {
			return err
		}
	}
	_, err := b.write(body)
	return err
}

// compressed reports whether the connection negotiated
// permessage-deflate. Valid once the handshake is written.
func (b *bufConn) compressed() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.deflate
}

func (b *bufConn) write(p []byte) (int, error) {
	if b.w != nil {
		return b.w.Write(p)
	}
	return b.Conn.Write(p)
}

func (b *bufConn) beginBatch() {
	w := writerPool.Get().(*bufio.Writer)
	w.Reset(b.Conn)
	b.mu.Lock()
	b.w = w
	b.mu.Unlock()
}

// endBatch writes what the batch collected and leaves batch mode.
func (b *bufConn) endBatch() error {
	b.mu.Lock()
	w := b.w
	b.w = nil
	err := w.Flush()
	b.mu.Unlock()
	w.Reset(nil)
	writerPool.Put(w)
	return err
}

func (b *bufConn) SetWriteDeadline(t time.Time) error {
	c := b.deadlineCap.Load()
	if c != 0 && (t.IsZero() || t.UnixNano() > c) {
		t = time.Unix(0, c)
	}
	err := b.Conn.SetWriteDeadline(t)
	// capDeadline may have run between the load and the set; re-check so
	// that its cap is never overwritten with a later deadline.
	if c2 := b.deadlineCap.Load(); c2 != c && (t.IsZero() || t.UnixNano() > c2) {
		err = b.Conn.SetWriteDeadline(time.Unix(0, c2))
	}
	return err
}

// capDeadline bounds every write from now on, including one blocked right
// now, to t.
func (b *bufConn) capDeadline(t time.Time) {
	for {
		old := b.deadlineCap.Load()
		if old != 0 && old <= t.UnixNano() {
			return
		}
		if b.deadlineCap.CompareAndSwap(old, t.UnixNano()) {
			b.Conn.SetWriteDeadline(t)
			return
		}
	}
}

// hijackWriter hands gorilla's Upgrade a bufConn instead of the raw
// connection.
type hijackWriter struct {
	http.ResponseWriter
	conn *bufConn
}

func (w *hijackWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	c, brw, err := http.NewResponseController(w.ResponseWriter).Hijack()
	if err != nil {
		return nil, nil, err
	}
	w.conn = &bufConn{Conn: c}
	return w.conn, brw, nil
}
