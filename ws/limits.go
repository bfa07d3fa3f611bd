package ws

import (
	"bytes"
	"encoding/json"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/pubmesh/pubmesh/clusterconfig"
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
	if IsReserved(name) {
		return badRequest(id, "channels starting with %q are reserved for the gateways", ReservedPrefix)
	}
	return nil
}

// authorize checks the channel name, then applies its namespace rule for op
// to p: the first steps of every subscribe, publish and history read, for
// every transport, in this order.
func (h *Handler) authorize(l *limits, id json.RawMessage, p *Principal, op, channel string) (clusterconfig.Namespace, *Error) {
	if e := h.checkChannel(id, channel); e != nil {
		return clusterconfig.Namespace{}, e
	}
	return h.checkAccess(l, id, p, op, channel)
}

// checkData validates and compacts publish data: at most max bytes
// (too_large; the namespace's max_publish_bytes or the MaxPublishBytes
// override), valid UTF-8 and valid JSON (bad_request). HTTP bodies come
// here too. encoding/json accepts invalid UTF-8 inside strings, but a text
// frame carrying it makes browsers drop the connection, so it is refused
// here rather than repaired on the way out.
func (h *Handler) checkData(id json.RawMessage, data []byte, max int) ([]byte, *Error) {
	if len(data) > max {
		return nil, &Error{Code: CodeTooLarge, Message: "data larger than " + byteSize(max), ID: id}
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

// allowPublish applies the publish rate limit of l, for both transports: a
// token's publishes draw on its subject's bucket, shared by all its
// WebSocket connections and its HTTP requests, so that more connections or
// tokens for one sub do not mean more publishes. Other principals (API
// keys, clients without a credential, anyone on an insecure gateway) draw
// on their WebSocket connection's own bucket, conn. Over HTTP (conn nil)
// a client without a credential draws on the bucket of its address, addr;
// the others are not limited.
func (h *Handler) allowPublish(l *limits, id json.RawMessage, p *Principal, conn *connLimiter, addr string) *Error {
	now := time.Now()
	per := "per second"
	switch {
	case p.Kind == "jwt":
		if h.subjects.allow(p.Subject, now) {
			return nil
		}
		per += " for subject " + strconv.Quote(p.Subject)
	case conn != nil:
		if conn.allow(l, now) {
			return nil
		}
	case p.Kind == "anonymous" && !p.All:
		if h.anonPublishers.allow(addr, now) {
			return nil
		}
		per += " for address " + addr + " without a credential"
	default:
		return nil
	}
	return &Error{Code: CodeRateLimited, Message: "over " + strconv.FormatFloat(l.publishRate, 'f', -1, 64) + " publishes " + per, ID: id}
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
