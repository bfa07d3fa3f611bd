package ws

import (
	"encoding/binary"
	"sync"

	"github.com/gorilla/websocket"
)

// Why this file exists: a message goes to every WebSocket subscriber of
// its channel as the same bytes. A server's frames are unmasked, so
// without compression the whole frame (header and payload) is the same for
// every connection: the pump builds it once (sharedFrame) and each
// connection's writer copies it straight into its batch buffer (bufConn),
// instead of gorilla re-framing it per connection through its own write
// buffer (a copy, a pool get and put, a lock and a deadline per frame).
// With compression negotiated the frame goes through gorilla's
// PreparedMessage, which compresses it once per compression level for all
// such connections (no context takeover makes the result the same).

// frameHeadroom is the room the pump leaves before a message's JSON for
// the longest header of an unmasked server frame (RFC 6455 5.2).
const frameHeadroom = 10

// newHeadroom returns an empty buffer with frameHeadroom bytes reserved
// in front, for appending a frame's JSON to.
func newHeadroom(size int) []byte {
	return make([]byte, frameHeadroom, frameHeadroom+size)
}

// sharedFrame is a message frame for every subscriber: buf is a
// newHeadroom buffer with the JSON appended. The header is written into
// the headroom, so that the frame on the wire needs no copy of the JSON.
func sharedFrame(buf []byte, f *outFrame) *outFrame {
	f.b = buf[frameHeadroom:]
	n := headerLen(len(f.b))
	putHeader(buf[frameHeadroom-n:frameHeadroom], len(f.b))
	f.wire = buf[frameHeadroom-n:]
	return f
}

// headerLen is the length of a final, unmasked text frame's header for a
// payload of n bytes.
func headerLen(n int) int {
	switch {
	case n < 126:
		return 2
	case n <= 0xffff:
		return 4
	default:
		return 10
	}
}

// putHeader writes the header of a final, unmasked text frame of n bytes
// into h (headerLen(n) bytes).
func putHeader(h []byte, n int) {
	h[0] = 0x80 | websocket.TextMessage // FIN, no RSV bits (no compression)
	switch {
	case n < 126:
		h[1] = byte(n)
	case n <= 0xffff:
		h[1] = 126
		binary.BigEndian.PutUint16(h[2:], uint16(n))
	default:
		h[1] = 127
		binary.BigEndian.PutUint64(h[2:], uint64(n))
	}
}

// preparedFrame is f as a gorilla PreparedMessage, built by the first
// compressed connection to write f and shared by the others.
type preparedFrame struct {
	once sync.Once
	pm   *websocket.PreparedMessage
	err  error
}

func (p *preparedFrame) get(b []byte) (*websocket.PreparedMessage, error) {
	p.once.Do(func() { p.pm, p.err = websocket.NewPreparedMessage(websocket.TextMessage, b) })
	return p.pm, p.err
}
