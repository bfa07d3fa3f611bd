package ws

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"
	"unicode/utf8"
)

// Operations in the "op" field of a frame. See docs/protocol.md.
const (
	// Client to server.
	OpSubscribe   = "subscribe"
	OpUnsubscribe = "unsubscribe"
	OpPublish     = "publish"
	OpPing        = "ping"
	// OpHistory reads a channel's history; its reply has the same op.
	OpHistory = "history"
	// OpPSubscribe and OpPUnsubscribe subscribe to a channel pattern and
	// end that (pattern.go).
	OpPSubscribe   = "psubscribe"
	OpPUnsubscribe = "punsubscribe"
	// OpRefresh replaces the session's token (refresh.go).
	OpRefresh = "refresh"
	// OpPresence lists who is subscribed to a presence channel, and
	// OpPresenceStats counts them; their replies have the same op.
	OpPresence      = "presence"
	OpPresenceStats = "presence_stats"
	// Server to client.
	OpOK      = "ok"
	OpError   = "error"
	OpMessage = "message"
	// OpClose is the last frame of a stream (SSE, HTTP streaming) that the
	// gateway ends, with the close code a WebSocket would get.
	OpClose = "close"
	// OpUnsubscribed tells a client that the gateway ended one of its
	// subscriptions (a refresh whose claims no longer allow it).
	OpUnsubscribed = "unsubscribed"
	// OpJoin and OpLeave frames tell the subscribers of a join_leave
	// channel that a client joined or left it.
	OpJoin  = "join"
	OpLeave = "leave"
)

// Error codes of error frames and HTTP error bodies.
const (
	CodeBadRequest   = "bad_request"  // malformed frame, unknown op, bad channel name, data that is not JSON
	CodeForbidden    = "forbidden"    // the credential or the channel's namespace rule does not allow it
	CodeTooLarge     = "too_large"    // publish data over the namespace's max_publish_bytes (or MaxPublishBytes)
	CodeRateLimited  = "rate_limited" // over the publish rate
	CodeLimit        = "limit"        // over the subscriptions per connection
	CodeUnavailable  = "unavailable"  // the fanout client failed (no ready node, timeout)
	CodeUnauthorized = "unauthorized" // HTTP only: missing, invalid or expired credential
	CodeNoHistory    = "no_history"   // since or history on a channel whose namespace keeps no history (history_size 0)
	CodeNoPresence   = "no_presence"  // presence on a channel whose namespace has presence: false
)

// Close codes the gateway sends, besides 1000 (an echo of the client's own
// close).
const (
	CloseGoingAway    = 1001 // the gateway is shutting down
	CloseTooBig       = 1009 // a frame over MaxFrameBytes
	CloseInternal     = 1011 // the gateway lost its subscription to a channel
	CloseTokenExpired = 4001 // the token's exp passed; reconnect with a fresh one
	CloseSlowConsumer = 4008 // the send queue overflowed: the client reads too slowly
	// Closes by the server API (POST /api/disconnect): 4000 asks the
	// client to reconnect, 4009 not to (docs/protocol.md).
	CloseDisconnectReconnect = 4000
	CloseDisconnect          = 4009
)

// maxIDBytes bounds the id a client may send; the gateway echoes it.
const maxIDBytes = 64

// Frame is a decoded client frame.
type Frame struct {
	Op      string
	Channel string
	// Data is the publish data, valid JSON (possibly "null"); nil when
	// absent.
	Data json.RawMessage
	// ID is the request id as sent (a JSON number or string), echoed in the
	// reply; nil when absent.
	ID json.RawMessage
	// Since is the position a subscribe resumes from, or a history read
	// starts after (docs/history.md); "" when absent. Other ops ignore it.
	Since string
	// Limit bounds a history read; 0 when absent (the gateway's maximum,
	// HistoryLimit).
	Limit int
	// Reverse asks a history read for the newest messages, newest first.
	Reverse bool
	// Pattern of a psubscribe or punsubscribe.
	Pattern string
	// Token of a refresh.
	Token string
}

// Error is a protocol error: the reply to a frame the gateway refuses.
type Error struct {
	Code    string
	Message string
	// ID of the frame it answers, when it could be read.
	ID json.RawMessage
}

func (e *Error) Error() string { return "ws: " + e.Code + ": " + e.Message }

func badRequest(id json.RawMessage, format string, args ...any) *Error {
	return &Error{Code: CodeBadRequest, Message: fmt.Sprintf(format, args...), ID: id}
}

type wireFrame struct {
	Op      string          `json:"op"`
	Channel string          `json:"channel"`
	Data    json.RawMessage `json:"data"`
	ID      json.RawMessage `json:"id"`
	Since   string          `json:"since"`
	Limit   int             `json:"limit"`
	Reverse bool            `json:"reverse"`
	Pattern string          `json:"pattern"`
	Token   string          `json:"token"`
}

// DecodeFrame parses one client frame. It checks the shape (an object with
// a known op, a channel where the op needs one, data for publish, an id
// that is a number or a string of at most 64 bytes, since a string, limit
// a non-negative integer, reverse a boolean) but not the channel name
// rules, which depend on the Config, nor whether since is a position. Unknown fields are ignored. On
// failure it returns an *Error with code bad_request and, when it could be
// read, the frame's id.
func DecodeFrame(b []byte) (Frame, error) {
	if !utf8.Valid(b) {
		return Frame{}, badRequest(nil, "frame is not UTF-8")
	}
	b = bytes.TrimSpace(b)
	if len(b) == 0 || b[0] != '{' {
		return Frame{}, badRequest(nil, "frame is not a JSON object")
	}
	var w wireFrame
	err := json.Unmarshal(b, &w)
	var te *json.UnmarshalTypeError
	if err != nil && !errors.As(err, &te) {
		return Frame{}, badRequest(nil, "frame is not valid JSON: %v", err)
	}
	id, idErr := checkID(w.ID)
	if idErr != nil {
		return Frame{}, idErr
	}
	if err != nil {
		return Frame{}, badRequest(id, "field %q has the wrong type", te.Field)
	}
	f := Frame{Op: w.Op, Channel: w.Channel, ID: id}
	switch w.Op {
	case OpSubscribe:
		f.Since = w.Since
	case OpUnsubscribe, OpPresence, OpPresenceStats:
	case OpHistory:
		if w.Limit < 0 {
			return Frame{}, badRequest(id, "limit must not be negative")
		}
		f.Since, f.Limit, f.Reverse = w.Since, w.Limit, w.Reverse
	case OpPublish:
		if w.Data == nil {
			return Frame{}, badRequest(id, "publish needs data")
		}
		f.Data = w.Data
	case OpPing:
		return f, nil
	case OpPSubscribe, OpPUnsubscribe:
		if w.Pattern == "" {
			return Frame{}, badRequest(id, "%s needs a pattern", w.Op)
		}
		f.Pattern = w.Pattern
		return f, nil
	case OpRefresh:
		if w.Token == "" {
			return Frame{}, badRequest(id, "refresh needs a token")
		}
		f.Token = w.Token
		return f, nil
	case "":
		return Frame{}, badRequest(id, "missing op")
	default:
		return Frame{}, badRequest(id, "unknown op %q", truncate(w.Op, 32))
	}
	if w.Channel == "" {
		return Frame{}, badRequest(id, "%s needs a channel", w.Op)
	}
	return f, nil
}

// checkID accepts a JSON number or string of at most maxIDBytes; null
// counts as absent.
func checkID(id json.RawMessage) (json.RawMessage, *Error) {
	if len(id) == 0 || string(id) == "null" {
		return nil, nil
	}
	if len(id) > maxIDBytes {
		return nil, badRequest(nil, "id longer than %d bytes", maxIDBytes)
	}
	switch c := id[0]; {
	case c == '"':
		return id, nil
	case c == '-', c >= '0' && c <= '9':
		// A number the client could not read back (10e700 overflows a
		// double) is refused rather than echoed.
		if _, err := strconv.ParseFloat(string(id), 64); err != nil {
			return nil, badRequest(nil, "id is a number out of range")
		}
		return id, nil
	}
	return nil, badRequest(nil, "id must be a number or a string")
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "…"
}

// okFrame is {"op":"ok","id":<id>}, or {"op":"ok"} without an id.
func okFrame(id json.RawMessage) []byte {
	return append(openReply(OpOK, id, 0), '}')
}

// subscribedFrame is the ok of a plain subscribe: {"op":"ok","id":<id>,
// "pos":"<position>"}, pos omitted when empty (a channel without history,
// or whose position is not known).
func subscribedFrame(id json.RawMessage, pos string) []byte {
	b := openReply(OpOK, id, len(pos)+10)
	if pos != "" {
		b = append(b, `,"pos":`...)
		b = appendString(b, pos)
	}
	return append(b, '}')
}

// resumedFrame is the ok of a subscribe with since: {"op":"ok","id":<id>,
// "recovered":true|false,"count":<n>}, n the messages from history that
// follow it.
func resumedFrame(id json.RawMessage, recovered bool, count int) []byte {
	b := openReply(OpOK, id, 32)
	b = append(b, `,"recovered":`...)
	b = strconv.AppendBool(b, recovered)
	b = append(b, `,"count":`...)
	b = strconv.AppendInt(b, int64(count), 10)
	return append(b, '}')
}

// openReply starts {"op":<op>,"id":<id> (id omitted when nil), without the
// closing brace, with room for extra more bytes.
func openReply(op string, id json.RawMessage, extra int) []byte {
	b := make([]byte, 0, 20+len(id)+extra)
	b = append(b, `{"op":`...)
	b = appendString(b, op)
	if id != nil {
		b = append(b, `,"id":`...)
		b = append(b, id...)
	}
	return b
}

type wireError struct {
	Op      string          `json:"op"`
	ID      json.RawMessage `json:"id,omitempty"`
	Code    string          `json:"code"`
	Message string          `json:"message"`
}

// errorFrame is {"op":"error","id":<id>,"code":…,"message":…}.
func errorFrame(e *Error) []byte {
	b, _ := json.Marshal(wireError{Op: OpError, ID: e.ID, Code: e.Code, Message: e.Message})
	return b
}

// encodeMessage builds a message frame once for every subscriber:
//
//	{"op":"message","channel":"news","data":<JSON>,"id":"<message id>","ts":<ms>,"pos":"<position>"}
//
// pos, the message's position (history channels only), is omitted when
// empty, as ts is when zero. See appendMessage for the data.
func encodeMessage(channel string, payload []byte, id string, ts time.Time, pos string) []byte {
	b := make([]byte, 0, messageSize(channel, payload, id, pos))
	return appendMessageFrame(b, channel, payload, id, ts, pos)
}

// messageSize is about the size of a message frame, for the buffer.
func messageSize(channel string, payload []byte, id string, pos string) int {
	return 80 + len(channel) + len(payload) + len(id) + len(pos)
}

// appendMessageFrame appends encodeMessage's frame to b.
func appendMessageFrame(b []byte, channel string, payload []byte, id string, ts time.Time, pos string) []byte {
	b = append(b, `{"op":"message",`...)
	return append(appendMessage(b, channel, payload, id, ts, pos), '}')
}

// encodePatternMessage is the message frame of a pattern subscription:
//
//	{"op":"message","pattern":"news.*","channel":"news.eu","data":<JSON>,"id":"<message id>","ts":<ms>}
//
// (no pos: history does not apply to patterns).
func encodePatternMessage(pattern, channel string, payload []byte, id string, ts time.Time) []byte {
	return appendPatternMessage(make([]byte, 0, 16+len(pattern)+messageSize(channel, payload, id, "")), pattern, channel, payload, id, ts)
}

// appendPatternMessage appends encodePatternMessage's frame to b.
func appendPatternMessage(b []byte, pattern, channel string, payload []byte, id string, ts time.Time) []byte {
	b = append(b, `{"op":"message","pattern":`...)
	b = appendString(b, pattern)
	b = append(b, ',')
	return append(appendMessage(b, channel, payload, id, ts, ""), '}')
}

// appendMessage appends the fields of a message, without braces:
//
//	"channel":"news","data":<JSON>,"id":"<message id>","ts":<ms>,"pos":"<position>"
//
// A payload that is valid JSON is sent as is; any other payload (published
// by a Go service) as a JSON string. Either way each byte of invalid UTF-8
// becomes U+FFFD: json.Valid accepts it inside strings, but browsers close
// a connection whose text frame carries it (1006), and a node may carry
// anything (a raw PUBLISH). The result is always valid UTF-8 and valid
// JSON.
func appendMessage(b []byte, channel string, payload []byte, id string, ts time.Time, pos string) []byte {
	b = append(b, `"channel":`...)
	b = appendString(b, channel)
	b = append(b, `,"data":`...)
	switch {
	case !json.Valid(payload):
		b = appendString(b, string(payload))
	case utf8.Valid(payload):
		b = append(b, payload...)
	default:
		// Outside strings json.Valid allows ASCII only, so the invalid
		// bytes are all inside strings, where U+FFFD keeps the JSON valid.
		b = appendValidUTF8(b, payload)
	}
	b = append(b, `,"id":`...)
	b = appendString(b, id)
	if !ts.IsZero() {
		b = append(b, `,"ts":`...)
		b = strconv.AppendInt(b, ts.UnixMilli(), 10)
	}
	if pos != "" {
		b = append(b, `,"pos":`...)
		b = appendString(b, pos)
	}
	return b
}

// appendValidUTF8 appends p with each byte that is not part of a valid
// UTF-8 sequence replaced by U+FFFD, as encoding/json does when it encodes
// a string.
func appendValidUTF8(b, p []byte) []byte {
	for len(p) > 0 {
		r, n := utf8.DecodeRune(p)
		if r == utf8.RuneError && n == 1 {
			b = utf8.AppendRune(b, utf8.RuneError)
		} else {
			b = append(b, p[:n]...)
		}
		p = p[n:]
	}
	return b
}

func appendString(b []byte, s string) []byte {
	q, _ := json.Marshal(s)
	return append(b, q...)
}
