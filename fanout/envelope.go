package fanout

import (
	"strconv"
	"strings"
)

// The envelope is a one-line text header in front of the payload, so a
// plain `redis-cli SUBSCRIBE` shows readable messages:
//
//	pm1 <publisher hex16> <seq> <prev> <unix nanos>[ <traceparent>]\n<payload>
//
// publisher is a random 64-bit id per Client; seq counts that client's
// messages from 1; prev is the seq of its previous message on the same
// channel (0 when unknown); the time is when Publish was called. A message
// without a valid header (for example from `redis-cli PUBLISH`) is delivered
// as is, with an empty ID and no dedup.
//
// The optional fields after the time are for tracing (trace.go): a W3C
// traceparent, written only by a publisher whose span is sampled. A parser
// skips a field it does not know, and a malformed traceparent, so a later
// field never makes this version see a raw message; a version from before
// the field (which allowed 4 fields and 128 bytes) does see one
// (docs/wire-format.md says how to upgrade).
const envelopeMagic = "pm1 "

// maxHeader is the longest header parseEnvelope accepts, newline
// excluded: the 4 required fields take at most 82 bytes, a traceparent 56
// more, and the rest is room for a field still to come.
const maxHeader = 256

type envelope struct {
	pub  uint64
	seq  uint64
	prev uint64
	ts   int64
	// trace is the W3C traceparent of the publisher's span, or "". From
	// parseEnvelope it is a substring of its input (no copy).
	trace string
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
	if e.trace != "" {
		dst = append(dst, ' ')
		dst = append(dst, e.trace...)
	}
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
	if nl < 0 || nl > maxHeader {
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
	var extra string
	if sp := strings.IndexByte(f, ' '); sp >= 0 {
		f, extra = f[:sp], f[sp+1:]
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
	// Optional fields: the first valid traceparent is the trace; anything
	// else is skipped.
	for extra != "" {
		field := extra
		if sp := strings.IndexByte(extra, ' '); sp >= 0 {
			field, extra = extra[:sp], extra[sp+1:]
		} else {
			extra = ""
		}
		if e.trace == "" && validTraceparent(field) {
			e.trace = field
		}
	}
	return e, s[nl+1:], true
}

// validTraceparent reports whether s is a W3C traceparent of version 00:
// 00-<trace id, 32 hex>-<parent id, 16 hex>-<flags, 2 hex>, lowercase,
// with non-zero ids.
func validTraceparent(s string) bool {
	if len(s) != traceparentLen || s[0] != '0' || s[1] != '0' || s[2] != '-' || s[35] != '-' || s[52] != '-' {
		return false
	}
	return lowerHex(s[3:35]) && lowerHex(s[36:52]) && lowerHex(s[53:55]) &&
		s[3:35] != "00000000000000000000000000000000" && s[36:52] != "0000000000000000"
}

const traceparentLen = 55

func lowerHex(s string) bool {
	for i := range len(s) {
		if c := s[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// id formats the message id users see: "<publisher hex16>-<seq>".
func (e envelope) id() string {
	b := make([]byte, 0, 40)
	b = appendHex16(b, e.pub)
	b = append(b, '-')
	return string(strconv.AppendUint(b, e.seq, 10))
}
