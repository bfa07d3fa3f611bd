package ws

import (
	"bytes"
	"encoding/json"
	"strconv"
	"time"
	"unicode/utf8"

	"golang.org/x/time/rate"

	"github.com/pubmesh/pubmesh/fanout"
)

// checkChannel applies fanout.ValidateChannel (non-empty, printable UTF-8,
// no spaces or control characters) and MaxChannelBytes.
func (h *Handler) checkChannel(id json.RawMessage, name string) *Error {
	if len(name) > h.cfg.MaxChannelBytes {
		return badRequest(id, "channel name longer than %d bytes", h.cfg.MaxChannelBytes)
	}
	if err := fanout.ValidateChannel(name); err != nil {
		return badRequest(id, "bad channel name: %v", err)
	}
	return nil
}

// checkData validates and compacts publish data: at most MaxPublishBytes
// (too_large), valid UTF-8 and valid JSON (bad_request). HTTP bodies come
// here too. encoding/json accepts invalid UTF-8 inside strings, but a text
// frame carrying it makes browsers drop the connection, so it is refused
// here rather than repaired on the way out.
func (h *Handler) checkData(id json.RawMessage, data []byte) ([]byte, *Error) {
	if len(data) > h.cfg.MaxPublishBytes {
		return nil, &Error{Code: CodeTooLarge, Message: "data larger than " + byteSize(h.cfg.MaxPublishBytes), ID: id}
	}
	if !utf8.Valid(data) {
		return nil, badRequest(id, "data is not valid UTF-8")
	}
	var buf bytes.Buffer
	buf.Grow(len(data))
	if err := json.Compact(&buf, data); err != nil {
		return nil, badRequest(id, "data is not valid JSON: %v", err)
	}
	return buf.Bytes(), nil
}

// newLimiter returns the publish limiter of a WebSocket connection of p, or
// nil: a token's connections share their subject's (allowPublish), and a
// negative PublishRate means no limit.
func (h *Handler) newLimiter(p *Principal) *rate.Limiter {
	if h.cfg.PublishRate < 0 || p.Kind == "jwt" {
		return nil
	}
	return rate.NewLimiter(rate.Limit(h.cfg.PublishRate), h.cfg.PublishBurst)
}

// allowPublish applies the publish rate limit, for both transports: a
// token's publishes draw on its subject's bucket, shared by all its
// WebSocket connections and its HTTP requests, so that more connections or
// tokens for one sub do not mean more publishes. Other principals (API
// keys, anyone on an insecure gateway) draw on their WebSocket
// connection's own bucket, conn, and over HTTP (conn nil) are not limited.
func (h *Handler) allowPublish(id json.RawMessage, p *Principal, conn *rate.Limiter) *Error {
	per := "per second"
	if p.Kind == "jwt" {
		if h.subjects.allow(p.Subject, time.Now()) {
			return nil
		}
		per += " for subject " + strconv.Quote(p.Subject)
	} else if conn == nil || conn.Allow() {
		return nil
	}
	return &Error{Code: CodeRateLimited, Message: "over " + strconv.FormatFloat(h.cfg.PublishRate, 'f', -1, 64) + " publishes " + per, ID: id}
}

func byteSize(n int) string {
	switch {
	case n >= 1<<20 && n%(1<<20) == 0:
		return strconv.Itoa(n>>20) + " MiB"
	case n >= 1<<10 && n%(1<<10) == 0:
		return strconv.Itoa(n>>10) + " KiB"
	}
	return strconv.Itoa(n) + " bytes"
}
