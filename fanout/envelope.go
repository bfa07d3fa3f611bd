package fanout

import (
	"strconv"
	"strings"
)

// The envelope is a one-line text header in front of the payload, so a
// plain `redis-cli SUBSCRIBE` shows readable messages:
//
//	pm1 <publisher hex16> <seq> <prev> <unix nanos>\n<payload>
//
// publisher is a random 64-bit id per Client; seq counts that client's
// messages from 1; prev is the seq of its previous message on the same
// channel (0 when unknown); the time is when Publish was called. A message
// without a valid header (for example from `redis-cli PUBLISH`) is delivered
// as is, with an empty ID and no dedup.
const envelopeMagic = "pm1 "

type envelope struct {
	pub  uint64
	seq  uint64
	prev uint64
	ts   int64
}

func appendEnvelope(dst []byte, e envelope, payload []byte) []byte {
	dst = append(dst, envelopeMagic...)
	dst = appendHex16(dst, e.pub)
	dst = append(dst, ' ')
	dst = strconv.AppendUint(dst, e.seq, 10)
	dst = append(dst, ' ')
	dst = strconv.AppendUint(dst, e.prev, 10)
	dst = append(dst, ' ')
	dst = strconv.AppendInt(dst, e.ts, 10)
	dst = append(dst, '\n')
	return append(dst, payload...)
}

func appendHex16(dst []byte, v uint64) []byte {
	const digits = "0123456789abcdef"
	for i := 60; i >= 0; i -= 4 {
		dst = append(dst, digits[(v>>uint(i))&0xf])
	}
	return dst
}

// parseEnvelope splits a raw Redis payload. ok is false when s carries no
// valid header; the whole of s is then the payload.
func parseEnvelope(s string) (e envelope, payload string, ok bool) {
	if !strings.HasPrefix(s, envelopeMagic) {
		return envelope{}, s, false
	}
	nl := strings.IndexByte(s, '\n')
	if nl < 0 || nl > 128 {
		return envelope{}, s, false
	}
	f := s[len(envelopeMagic):nl]
	var fields [4]string
	for i := range 3 {
		sp := strings.IndexByte(f, ' ')
		if sp < 0 {
			return envelope{}, s, false
		}
		fields[i], f = f[:sp], f[sp+1:]
	}
	fields[3] = f
	var err error
	if len(fields[0]) != 16 {
		return envelope{}, s, false
	}
	if e.pub, err = strconv.ParseUint(fields[0], 16, 64); err != nil || e.pub == 0 {
		return envelope{}, s, false
	}
	if e.seq, err = strconv.ParseUint(fields[1], 10, 64); err != nil || e.seq == 0 {
		return envelope{}, s, false
	}
	if e.prev, err = strconv.ParseUint(fields[2], 10, 64); err != nil || e.prev >= e.seq {
		return envelope{}, s, false
	}
	if e.ts, err = strconv.ParseInt(fields[3], 10, 64); err != nil {
		return envelope{}, s, false
	}
	return e, s[nl+1:], true
}

// id formats the message id users see: "<publisher hex16>-<seq>".
func (e envelope) id() string {
	b := make([]byte, 0, 40)
	b = appendHex16(b, e.pub)
	b = append(b, '-')
	return string(strconv.AppendUint(b, e.seq, 10))
}
