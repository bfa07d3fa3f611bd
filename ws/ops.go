package ws

import (
	"context"
	"encoding/json"
	"strconv"

	"go.opentelemetry.io/otel/trace"
)

// The operations of every transport, each in one order: validate the
// request (channel name, data), authorize it (the namespace rule, then the
// principal's claims), rate-limit it, then call the fanout client. A
// transport decodes a request into a Frame and calls handle (WebSocket),
// or calls the op it needs directly (SSE, HTTP streaming, the HTTP API),
// so that no transport validates or authorizes on its own.

// handle performs the client frame data and queues its reply.
func (s *session) handle(data []byte) {
	f, err := DecodeFrame(data)
	if err != nil {
		s.replyError(err.(*Error))
		return
	}
	var e *Error
	switch f.Op {
	case OpPing:
	case OpSubscribe:
		if e = s.subscribe(f); e == nil {
			return // subscribe queued the reply itself
		}
	case OpUnsubscribe:
		e = s.unsubscribe(f)
	case OpPublish:
		e = s.publish(f)
	case OpHistory:
		if e = s.history(f); e == nil {
			return // history queued the reply itself
		}
	case OpPSubscribe:
		if e = s.psubscribe(f); e == nil {
			return // psubscribe queued the reply itself
		}
	case OpPUnsubscribe:
		e = s.punsubscribe(f)
	case OpRefresh:
		e = s.refresh(f)
	case OpPresence, OpPresenceStats:
		if e = s.presence(f); e == nil {
			return // presence queued the reply itself
		}
	}
	if e != nil {
		s.replyError(e)
		return
	}
	s.reply(&outFrame{b: okFrame(f.ID)})
}

// subscribe applies the configuration in force now: a subscription made
// under an earlier one stays, even above a lowered limit or in a namespace
// closed since. On success it has queued the reply (an ok, or for a
// resume the ok and the messages from history).
func (s *session) subscribe(f Frame) *Error {
	l := s.h.limits()
	ns, e := s.h.authorize(l, f.ID, s.principal(), OpSubscribe, f.Channel)
	if e != nil {
		return e
	}
	if _, ok := s.subs[f.Channel]; ok {
		if _, evicted := s.evicted.LoadAndDelete(f.Channel); !evicted {
			// Already subscribed (since or not): the subscription goes on.
			s.reply(&outFrame{b: okFrame(f.ID)})
			return nil
		}
		s.leave(f.Channel) // unsubscribed by the server API: afresh
	}
	if f.Since != "" && ns.HistorySize == 0 {
		return noHistory(f.ID, f.Channel, ns)
	}
	if e := s.checkSubscriptionLimit(l, f.ID); e != nil {
		return e
	}
	// The presence entry goes in before the subscription's ok is queued,
	// so a client that has its ok finds itself in presence; the join event
	// goes out once the subscription is live, so the client gets its own.
	announce := s.presenceJoin(ns, f.Channel)
	if f.Since != "" {
		e := s.resume(f)
		if e == nil && s.subs[f.Channel] != nil {
			announce()
		} else {
			s.presenceLeave(f.Channel)
		}
		return e
	}
	ch, err := s.h.hub.subscribe(s.ctx, s, f.Channel, func(pos string) *outFrame {
		return &outFrame{b: subscribedFrame(f.ID, pos), channel: f.Channel, pos: pos, reply: true}
	})
	if err != nil {
		s.presenceLeave(f.Channel)
		if s.ctx.Err() != nil {
			return nil // closing: no reply needed
		}
		return &Error{Code: CodeUnavailable, Message: "subscribe failed: " + err.Error(), ID: f.ID}
	}
	s.subs[f.Channel] = ch
	s.h.metrics.subscriptions.Inc()
	announce()
	return nil
}

// checkSubscriptionLimit refuses one more subscription (channel or
// pattern) over max_subscriptions.
func (s *session) checkSubscriptionLimit(l *limits, id json.RawMessage) *Error {
	if max := l.maxSubscriptions; max >= 0 && len(s.subs) >= max {
		return &Error{Code: CodeLimit, Message: "at most " + strconv.Itoa(max) + " subscriptions per connection", ID: id}
	}
	return nil
}

func (s *session) unsubscribe(f Frame) *Error {
	if e := s.h.checkChannel(f.ID, f.Channel); e != nil {
		return e
	}
	s.leave(f.Channel)
	return nil
}

// leave ends the subscription under key, if any.
func (s *session) leave(key string) bool {
	ch, ok := s.subs[key]
	if !ok {
		return false
	}
	delete(s.subs, key)
	s.h.hub.release(s, ch)
	s.h.metrics.subscriptions.Dec()
	s.presenceLeave(key)
	return true
}

func (s *session) publish(f Frame) *Error {
	return s.h.publishOp(s.ctx, publishRequest{id: f.ID, p: s.principal(), limiter: s.limiter,
		channel: f.Channel, data: f.Data, source: "ws"})
}

// publishRequest is one publish, from any transport.
type publishRequest struct {
	id      json.RawMessage
	p       *Principal
	limiter *connLimiter // the session's own bucket, if it has one
	addr    string       // the client address (HTTP without a credential draws on its bucket)
	channel string
	data    []byte // as sent: checked and compacted here
	source  string // the metric label: ws or http
}

// publishOp is the publish of every transport: the channel name, the
// namespace rule and the claims, the data (size, UTF-8, JSON), the rate
// limit, then the fanout client.
func (h *Handler) publishOp(ctx context.Context, r publishRequest) *Error {
	if h.tracer != nil {
		var span trace.Span
		ctx, span = h.startPublish(ctx, r)
		e := h.checkedPublish(ctx, r)
		endPublish(span, e)
		return e
	}
	return h.checkedPublish(ctx, r)
}

func (h *Handler) checkedPublish(ctx context.Context, r publishRequest) *Error {
	l := h.limits()
	ns, e := h.authorize(l, r.id, r.p, OpPublish, r.channel)
	if e != nil {
		return e
	}
	data, e := h.checkData(r.id, r.data, l.maxPublishBytes(ns))
	if e != nil {
		return e
	}
	if e := h.allowPublish(l, r.id, r.p, r.limiter, r.addr); e != nil {
		return e
	}
	return h.publish(ctx, r.id, r.channel, data, r.source)
}

// publish sends data (valid, compact JSON) through the fanout client.
func (h *Handler) publish(ctx context.Context, id json.RawMessage, channel string, data []byte, source string) *Error {
	ctx, cancel := context.WithTimeout(ctx, h.cfg.OpTimeout)
	defer cancel()
	if err := h.client.Publish(ctx, channel, data); err != nil {
		return &Error{Code: CodeUnavailable, Message: "publish failed: " + err.Error(), ID: id}
	}
	h.metrics.messagesIn.WithLabelValues(source).Inc()
	return nil
}

// history answers the history op, authorized as a subscribe:
//
//	{"op":"history","id":2,"channel":"c","messages":[{…},…],"pos":"…","recovered":true}
func (s *session) history(f Frame) *Error {
	hist, e := s.h.historyOp(s.ctx, f.ID, s.principal(), f.Channel, f.Since, f.Limit, f.Reverse, s.transport)
	if e != nil {
		if s.ctx.Err() != nil {
			return nil // closing: no reply needed
		}
		return e
	}
	b := openReply(OpHistory, f.ID, 64+len(f.Channel))
	b = append(b, `,"channel":`...)
	b = appendString(b, f.Channel)
	b = append(b, ',')
	b = appendHistory(b, f.Channel, hist, f.Reverse)
	s.reply(&outFrame{b: append(b, '}')})
	return nil
}
