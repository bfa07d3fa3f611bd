package ws

import (
	"context"
	"fmt"
	"hash/fnv"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/pubmesh/pubmesh/fanout"
)

// numShards splits the channel map so that many clients subscribing at
// once (a reconnect storm) do not queue on one lock.
const numShards = 16

// hub holds one fanout subscription per channel for the whole gateway,
// however many clients want the channel: the first subscriber opens it,
// the last one to leave closes it. Each channel's pump goroutine encodes a
// message once and hands the same bytes to every subscriber's queue,
// without blocking: a full queue closes that connection, never delays the
// others. hub is safe for concurrent use.
type hub struct {
	h      *Handler
	ctx    context.Context // canceled by Handler.Shutdown
	shards [numShards]hubShard
}

type hubShard struct {
	mu       sync.Mutex // guards channels and the refs, subs writes, feed, err, closed of its channels
	channels map[string]*channel
}

// channel is one fanout subscription and its local subscribers: a channel,
// or a pattern (its name is then patternKey(pattern)).
type channel struct {
	name string
	// ready is closed once feed or err is set.
	ready chan struct{}
	feed  *fanout.Subscription
	err   error
	// refs counts subscribers, pending ones included; the one that brings
	// it to zero closes feed (or open does, if feed is not there yet).
	refs   int
	closed bool // feed has been closed (or was never opened)
	// subs is the copy-on-write list the pump reads without a lock.
	subs atomic.Pointer[[]*session]
	// pos is the channel's position for a subscriber joining now, on a
	// history channel: that of the newest message the pump handled, or
	// else the one read when the channel opened (seed); nil when unknown.
	pos atomic.Pointer[string]
}

func newHub(h *Handler, ctx context.Context) *hub {
	b := &hub{h: h, ctx: ctx}
	for i := range b.shards {
		b.shards[i].channels = make(map[string]*channel)
	}
	return b
}

func (b *hub) shard(name string) *hubShard {
	f := fnv.New32a()
	f.Write([]byte(name))
	return &b.shards[f.Sum32()%numShards]
}

// subscribe adds c to channel name, opening the fanout subscription if c
// is the first. It returns once messages flow. The reply ok(position) is
// queued to c just before c joins the channel's list, so that c sees the
// reply before any message, and the position it carries covers nothing c
// is owed. A resume passes nil: c holds the channel's frames itself
// (resume.go) and replies once it has read history.
func (b *hub) subscribe(ctx context.Context, s *session, name string, ok func(pos string) *outFrame) (*channel, error) {
	sh := b.shard(name)
	sh.mu.Lock()
	ch := sh.channels[name]
	first := ch == nil
	if first {
		ch = &channel{name: name, ready: make(chan struct{})}
		ch.subs.Store(new([]*session))
		sh.channels[name] = ch
	}
	ch.refs++
	sh.mu.Unlock()

	if first {
		b.open(sh, ch)
	}
	select {
	case <-ch.ready:
	case <-ctx.Done():
		b.release(s, ch)
		return nil, ctx.Err()
	}
	sh.mu.Lock()
	if ch.err != nil || ch.closed {
		err := ch.err
		sh.mu.Unlock()
		b.release(s, ch)
		if err == nil {
			err = fmt.Errorf("ws: subscription to %s ended", name)
		}
		return nil, err
	}
	if ok != nil {
		pos := ""
		if p := ch.pos.Load(); p != nil {
			pos = *p
		}
		s.enqueue(ok(pos))
	}
	subs := append(slices.Clone(*ch.subs.Load()), s)
	ch.subs.Store(&subs)
	sh.mu.Unlock()
	return ch, nil
}

// open subscribes through fanout, outside the shard lock, and starts the
// pump.
func (b *hub) open(sh *hubShard, ch *channel) {
	ctx, cancel := context.WithTimeout(b.ctx, b.h.cfg.OpTimeout)
	var feed *fanout.Subscription
	var err error
	if pattern, ok := patternOf(ch.name); ok {
		feed, err = b.h.client.PSubscribe(ctx, pattern)
	} else if feed, err = b.h.client.Subscribe(ctx, ch.name); err == nil {
		b.seed(ctx, ch)
	}
	cancel()
	sh.mu.Lock()
	ch.feed, ch.err = feed, err
	abandoned := err == nil && ch.refs == 0
	if err != nil || abandoned {
		ch.closed = true
		if sh.channels[ch.name] == ch {
			delete(sh.channels, ch.name)
		}
	}
	close(ch.ready)
	sh.mu.Unlock()
	switch {
	case err != nil:
		b.h.metrics.subscribeErrors.Inc()
		b.h.log.Warn("ws: fanout subscribe failed", "channel", ch.name, "err", err)
	case abandoned:
		feed.Close()
	default:
		b.h.metrics.channels.Inc()
		go b.pump(sh, ch, feed)
	}
}

// release removes c from ch; the last one out closes the fanout
// subscription.
func (b *hub) release(s *session, ch *channel) {
	sh := b.shard(ch.name)
	sh.mu.Lock()
	ch.refs--
	if old := *ch.subs.Load(); slices.Contains(old, s) {
		subs := slices.DeleteFunc(slices.Clone(old), func(x *session) bool { return x == s })
		ch.subs.Store(&subs)
	}
	var feed *fanout.Subscription
	if ch.refs == 0 {
		if sh.channels[ch.name] == ch {
			delete(sh.channels, ch.name)
		}
		select {
		case <-ch.ready:
			if !ch.closed {
				ch.closed = true
				feed = ch.feed
			}
		default: // open is still subscribing; it sees refs == 0 and closes
		}
	}
	sh.mu.Unlock()
	if feed != nil {
		feed.Close()
		b.h.metrics.channels.Dec()
	}
}

// pump delivers ch's messages until its feed is closed: by release, or by
// the fanout client itself (Close), in which case the subscribers are
// closed with 1011 so that they reconnect rather than wait in silence.
// The channel's position moves to a message's before the message goes
// out: a subscriber that joins in between is handed a position covering a
// message it does not get, one published before it joined.
func (b *hub) pump(sh *hubShard, ch *channel, feed *fanout.Subscription) {
	pattern, isPattern := patternOf(ch.name)
	compress := b.h.cfg.Compression
	for m := range feed.Messages() {
		b.h.metrics.messagesFanout.Inc()
		id, pos := m.ID(), m.Position()
		// One frame for every subscriber, WebSocket header included
		// (frame.go).
		var f *outFrame
		if isPattern {
			if IsReserved(m.Channel) {
				continue // the gateways' own channels are never a client's, whatever the pattern
			}
			buf := newHeadroom(16 + len(pattern) + messageSize(m.Channel, m.Payload, id, ""))
			f = sharedFrame(appendPatternMessage(buf, pattern, m.Channel, m.Payload, id, m.PublishedAt),
				&outFrame{msg: true, id: id, channel: m.Channel})
		} else {
			buf := newHeadroom(messageSize(ch.name, m.Payload, id, pos))
			f = sharedFrame(appendMessageFrame(buf, ch.name, m.Payload, id, m.PublishedAt, pos),
				&outFrame{msg: true, id: id, pos: pos, channel: ch.name})
		}
		if compress {
			f.prep = &preparedFrame{}
		}
		if pos != "" {
			ch.pos.Store(&pos)
		}
		subs := *ch.subs.Load()
		if b.h.tracer != nil {
			b.h.traceFrame(m, f, ch.name, len(subs))
		}
		for _, s := range subs {
			s.deliver(ch.name, f)
		}
	}
	sh.mu.Lock()
	lost := !ch.closed
	if lost {
		ch.closed = true
		if sh.channels[ch.name] == ch {
			delete(sh.channels, ch.name)
		}
	}
	subs := *ch.subs.Load()
	sh.mu.Unlock()
	if lost {
		b.h.metrics.channels.Dec()
		b.h.log.Warn("ws: fanout subscription ended", "channel", ch.name, "subscribers", len(subs))
		for _, s := range subs {
			s.close(CloseInternal, "subscription lost")
		}
	}
}

// patternKey is the hub's (and a session's subs') key of a pattern
// subscription: a channel name never starts with a NUL byte
// (fanout.ValidateChannel), so the two never collide.
func patternKey(pattern string) string { return "\x00" + pattern }

// patternOf returns the pattern of a hub key, if it is one.
func patternOf(key string) (string, bool) {
	if len(key) > 0 && key[0] == 0 {
		return key[1:], true
	}
	return "", false
}

// channelCount is the number of channels with a fanout subscription or one
// being opened.
func (b *hub) channelCount() int {
	n := 0
	for i := range b.shards {
		sh := &b.shards[i]
		sh.mu.Lock()
		n += len(sh.channels)
		sh.mu.Unlock()
	}
	return n
}
