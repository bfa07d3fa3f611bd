package bench

// A payload is a JSON string, so that the same bytes travel through every
// target, the WebSocket gateway's JSON frames included:
//
//	"1732254000123456789xxxxxxxx…"
//
// a quote, the publish time in unix nanoseconds as 19 digits, padding up to
// Config.PayloadSize, and a closing quote. Subscribers take the latency
// from the digits.

const stampDigits = 19

// fillPayload writes a payload of len(buf) bytes stamped with ns; it sets
// the padding only when pad is true (the first time a buffer is used).
func fillPayload(buf []byte, ns int64, pad bool) {
	if pad {
		for i := range buf {
			buf[i] = 'x'
		}
		buf[0], buf[len(buf)-1] = '"', '"'
	}
	for i := stampDigits; i >= 1; i-- {
		buf[i] = byte('0' + ns%10)
		ns /= 10
	}
}

// stampOf reads the timestamp of a payload; ok is false when p is not one.
func stampOf[T string | []byte](p T) (ns int64, ok bool) {
	if len(p) < stampDigits+2 || p[0] != '"' {
		return 0, false
	}
	for i := 1; i <= stampDigits; i++ {
		d := p[i] - '0'
		if d > 9 {
			return 0, false
		}
		ns = ns*10 + int64(d)
	}
	return ns, true
}
