package ws

import (
	"bufio"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
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
// what costs.

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

	mu sync.Mutex    // guards w; held while writing
	w  *bufio.Writer // non-nil inside a batch

	// deadlineCap, once non-zero (unix nanoseconds), caps every write
	// deadline: a closing connection stops waiting for a stuck client.
	deadlineCap atomic.Int64
}

func (b *bufConn) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
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
