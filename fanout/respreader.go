package fanout

import (
	"bytes"
	"errors"
	"fmt"
	"io"

	"github.com/pubmesh/pubmesh/internal/respguard"
)

// respReader reads the replies of a subscription connection: flat RESP2
// arrays of bulk strings and integers (message, pmessage, subscribe,
// pong...), and the single replies of the handshake. Elements are slices
// of its buffer, valid until the next call: a message costs no allocation
// here; the caller copies what it keeps. It enforces respguard's limits
// itself (a line over 64 KiB, a bulk string over 512 MiB, a nested or
// oversized array are a *respguard.Error), so that a server that is not
// Redis cannot make it allocate what it announces.
type respReader struct {
	rd   io.Reader
	addr string
	buf  []byte
	r, w int // unread bytes are buf[r:w]

	kind  byte     // of the last reply: '*' array, '$' bulk (nil: str == nil), '+', '-', ':'
	str   []byte   // the bulk, simple string, error or integer text
	elems [][]byte // array elements (nil for a null bulk); integers as text
	offs  []span   // elements as offsets into the reply while it is being read
}

type span struct{ from, to int } // from < 0: a null bulk string

const (
	respBufSize     = 32 << 10
	maxSubArrayElem = 16 // Redis's pub/sub replies have 3 or 4
)

func newRespReader(rd io.Reader, addr string) *respReader {
	return &respReader{rd: rd, addr: addr, buf: make([]byte, respBufSize)}
}

func (p *respReader) bad(format string, args ...any) error {
	return &respguard.Error{Addr: p.addr, Reason: fmt.Sprintf(format, args...)}
}

// fill reads more bytes, keeping buf[start:] (start is where the reply
// being read begins); it returns the new offset of start.
func (p *respReader) fill(start, need int) (int, error) {
	if p.w == len(p.buf) {
		// No room left: move the reply to the front; if it fills the
		// whole buffer, double the buffer (a large bulk string, up to
		// respguard.MaxBulk, checked by the caller). It grows only as the
		// reply's bytes arrive, never on the length a node announces: a
		// "$200000" with nothing after it costs no 256 KiB buffer
		// (FuzzRespReader found that).
		size := len(p.buf)
		if start == 0 && size < need {
			size *= 2
		}
		nb := p.buf
		if size > len(p.buf) {
			nb = make([]byte, size)
		}
		n := copy(nb, p.buf[start:p.w])
		p.buf, p.r, p.w = nb, p.r-start, n
		start = 0
	}
	n, err := p.rd.Read(p.buf[p.w:])
	p.w += n
	if n > 0 {
		return start, nil
	}
	if err == nil {
		err = io.ErrNoProgress
	}
	return start, err
}

// line returns the end (index of '\n') of the line that starts at pos,
// reading as needed; start is the reply's first byte (kept on refills).
func (p *respReader) line(start, pos int) (newStart, newPos, end int, err error) {
	for {
		if i := bytes.IndexByte(p.buf[pos:p.w], '\n'); i >= 0 {
			return start, pos, pos + i, nil
		}
		if p.w-pos > respguard.MaxLine {
			return start, pos, 0, p.bad("a line longer than %d bytes", respguard.MaxLine)
		}
		ns, err := p.fill(start, p.w-start+1)
		if err != nil {
			return start, pos, 0, err
		}
		pos, start = pos-(start-ns), ns
	}
}

// header parses the line buf[pos:end] (without CRLF) as a type byte and
// its text.
func header(b []byte) (byte, []byte) {
	if len(b) > 0 && b[len(b)-1] == '\r' {
		b = b[:len(b)-1]
	}
	if len(b) == 0 {
		return 0, nil
	}
	return b[0], b[1:]
}

// parseLen parses a RESP length: digits, or -1. (strconv would take a
// string, and its conversion allocates.)
func parseLen(b []byte) (int64, bool) {
	if len(b) == 2 && b[0] == '-' && b[1] == '1' {
		return -1, true
	}
	if len(b) == 0 || len(b) > 18 {
		return 0, false
	}
	var n int64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}

// next reads one reply. For an array its elements are in p.elems, else
// the value is in p.str; p.kind says which.
func (p *respReader) next() error {
	if p.r == p.w {
		p.r, p.w = 0, 0
		if len(p.buf) > 4*respBufSize { // a large message is gone: give the memory back
			p.buf = make([]byte, respBufSize)
		}
	}
	start := p.r
	start, pos, end, err := p.line(start, start)
	if err != nil {
		return err
	}
	kind, text := header(p.buf[pos:end])
	pos = end + 1
	p.elems, p.str = p.elems[:0], nil
	switch kind {
	case '+', '-', ':':
		p.kind, p.str, p.r = kind, text, pos
		return nil
	case '$':
		p.kind = '$'
		n, ok := parseLen(text)
		if !ok || n < -1 || n > respguard.MaxBulk {
			return p.bad("a bulk length %q", truncateBytes(text))
		}
		if n < 0 {
			p.r = pos
			return nil
		}
		from := pos - start
		if start, err = p.bulk(start, pos, int(n)); err != nil {
			return err
		}
		p.str = p.buf[start+from : start+from+int(n)]
		p.r = start + from + int(n) + 2
		return nil
	case '*', '>':
		n, ok := parseLen(text)
		if !ok || n > maxSubArrayElem {
			return p.bad("an array of %q elements in a subscription reply", truncateBytes(text))
		}
		p.kind = '*'
		p.offs = p.offs[:0]
		for range max(n, 0) {
			var end int
			if start, pos, end, err = p.line(start, pos); err != nil {
				return err
			}
			k, t := header(p.buf[pos:end])
			from := pos + 1 - start // where t begins
			pos = end + 1
			switch k {
			case ':', '+':
				p.offs = append(p.offs, span{from, from + len(t)})
			case '$':
				m, ok := parseLen(t)
				if !ok || m < -1 || m > respguard.MaxBulk {
					return p.bad("a bulk length %q", truncateBytes(t))
				}
				if m < 0 {
					p.offs = append(p.offs, span{-1, -1})
					continue
				}
				from := pos - start
				if start, err = p.bulk(start, pos, int(m)); err != nil {
					return err
				}
				pos = start + from + int(m) + 2
				p.offs = append(p.offs, span{from, from + int(m)})
			default:
				return p.bad("an element of type %q in a subscription reply", k)
			}
		}
		for _, s := range p.offs {
			if s.from < 0 {
				p.elems = append(p.elems, nil)
				continue
			}
			p.elems = append(p.elems, p.buf[start+s.from:start+s.to])
		}
		p.r = pos
		return nil
	default:
		return p.bad("a reply that starts with %q", kind)
	}
}

// bulk makes sure the n bytes and CRLF of a bulk string that begins at pos
// are buffered, and checks the CRLF; it returns the reply's new start.
func (p *respReader) bulk(start, pos, n int) (int, error) {
	for p.w-pos < n+2 {
		ns, err := p.fill(start, pos-start+n+2)
		if err != nil {
			return start, err
		}
		pos, start = pos-(start-ns), ns
	}
	if p.buf[pos+n] != '\r' || p.buf[pos+n+1] != '\n' {
		return start, p.bad("a bulk string not followed by CRLF")
	}
	return start, nil
}

func truncateBytes(b []byte) string {
	if len(b) > 32 {
		return string(b[:32]) + "..."
	}
	return string(b)
}

// redisError is an error reply; it is a redis.Error, so isRefusal and
// callers that look for one find it.
type redisError string

func (e redisError) Error() string { return string(e) }
func (redisError) RedisError()     {}

// errReply converts an error reply to an error.
func errReply(b []byte) error { return redisError(string(b)) }

var errUnexpectedReply = errors.New("fanout: unexpected reply on the subscription connection")
