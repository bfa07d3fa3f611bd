package ws

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pubmesh/pubmesh/fanout"
)

// A subscribe with since resumes a channel of a history namespace from a
// position (docs/history.md, docs/protocol.md): the session joins the
// channel's live list first, holding the live frames of that channel for
// itself, then reads history, then sends the ok (recovered, count), the
// messages from history, and the held frames that history did not already
// deliver (by message id); then live frames flow as usual. Every message is
// either in the history read (published before it) or live (published after
// the hub's subscription, which is confirmed on every node before the
// connection joins), or both, and both is sent once: no gap and no duplicate
// at the junction.

// DefaultResumeHold is how many live frames of one channel a session
// holds while it reads that channel's history. A resume that would hold more
// (a channel busier than the history read is fast) closes the session
// with 4008 "slow consumer", as a full send queue does: the client then
// resumes again from the last position it got, so nothing is lost, and
// recovered never says true over a gap.
const DefaultResumeHold = 4096

// holds are the channels a session is resuming. The hub's pump checks
// count (one atomic load per message) and only takes the lock while a
// resume is in progress.
type holds struct {
	count atomic.Int32
	mu    sync.Mutex
	m     map[string]*hold
}

// hold is one resuming channel's live frames, in arrival order. Once
// released, it keeps the ids of the messages history sent until
// skipUntil: such a message may still come live afterwards (the gateway's
// live copy can lag behind the history read), and is then dropped.
type hold struct {
	frames    []*outFrame
	sent      map[string]bool // non-nil once released
	skipUntil time.Time
}

// resumeSkipWindow is how long after a resume live copies of the messages
// history sent are dropped: longer than a message takes from its node to
// the gateway.
const resumeSkipWindow = 30 * time.Second

// resumeHooks let tests act at the moments that matter; nil in production.
type resumeHooks struct {
	// held runs after the session joined the live list, before the
	// history read.
	held func(s *session, channel string)
}

// deliver hands the pump's frame of channel to the session: to its hold
// while it resumes the channel, else to its send queue.
func (s *session) deliver(channel string, f *outFrame) {
	if s.holds.count.Load() > 0 && s.hold(channel, f) {
		return
	}
	s.enqueue(f)
}

// hold keeps f if channel is being resumed, and reports whether it did (or
// dropped it: the session is closing).
func (s *session) hold(channel string, f *outFrame) bool {
	s.holds.mu.Lock()
	hd := s.holds.m[channel]
	if hd == nil {
		s.holds.mu.Unlock()
		return false
	}
	if hd.sent != nil { // released: only drop what history already sent
		drop := f.id != "" && hd.sent[f.id]
		if drop {
			delete(hd.sent, f.id)
		}
		if len(hd.sent) == 0 || time.Now().After(hd.skipUntil) {
			delete(s.holds.m, channel)
			s.holds.count.Add(-1)
		}
		s.holds.mu.Unlock()
		return drop
	}
	full := len(hd.frames) >= s.h.cfg.resumeHold
	if !full {
		hd.frames = append(hd.frames, f)
	}
	s.holds.mu.Unlock()
	if full && s.close(CloseSlowConsumer, "slow consumer") {
		s.h.metrics.slowConsumers.Inc()
		s.log.Info("ws: closing slow consumer: too many live messages while resuming", "channel", channel, "held", s.h.cfg.resumeHold)
	}
	return true
}

// startHold makes the pump hold channel's frames for c. Called before c
// joins the channel's list.
func (s *session) startHold(channel string) {
	s.holds.mu.Lock()
	if s.holds.m == nil {
		s.holds.m = make(map[string]*hold)
	}
	s.holds.m[channel] = &hold{}
	s.holds.mu.Unlock()
	s.holds.count.Add(1)
}

// dropHold stops holding channel and discards what was held.
func (s *session) dropHold(channel string) {
	s.holds.mu.Lock()
	if _, ok := s.holds.m[channel]; ok {
		delete(s.holds.m, channel)
		s.holds.count.Add(-1)
	}
	s.holds.mu.Unlock()
}

// releaseHold sends the held frames of channel, except those whose message
// went out from history (sent), then stops holding. Frames that arrive
// meanwhile are held too and sent after, so the live order holds. It
// reports false when the session closed meanwhile.
func (s *session) releaseHold(channel string, sent map[string]bool) bool {
	for {
		s.holds.mu.Lock()
		hd := s.holds.m[channel]
		if hd == nil { // dropped meanwhile (the connection closes)
			s.holds.mu.Unlock()
			return false
		}
		frames := hd.frames
		hd.frames = nil
		if len(frames) == 0 {
			if len(sent) == 0 {
				delete(s.holds.m, channel)
				s.holds.count.Add(-1)
			} else {
				hd.sent, hd.skipUntil = sent, time.Now().Add(resumeSkipWindow)
			}
			s.holds.mu.Unlock()
			return true
		}
		s.holds.mu.Unlock()
		for _, f := range frames {
			if f.id != "" && sent[f.id] {
				delete(sent, f.id) // it came live: it cannot come again
				continue
			}
			if !s.reply(f) {
				s.dropHold(channel)
				return false
			}
		}
	}
}

// resume subscribes to f.Channel from position f.Since. The caller has
// checked access, the namespace's history and the subscription limit.
func (s *session) resume(f Frame) *Error {
	h := s.h
	s.startHold(f.Channel)
	ch, err := h.hub.subscribe(s.ctx, s, f.Channel, nil)
	if err != nil {
		s.dropHold(f.Channel)
		if s.ctx.Err() != nil {
			return nil // closing: no reply needed
		}
		return &Error{Code: CodeUnavailable, Message: "subscribe failed: " + err.Error(), ID: f.ID}
	}
	if hook := h.cfg.hooks.held; hook != nil {
		hook(s, f.Channel)
	}
	ctx, cancel := context.WithTimeout(s.ctx, h.cfg.OpTimeout)
	hist, err := h.client.History(ctx, f.Channel, fanout.HistoryOptions{Since: f.Since})
	cancel()
	if err != nil {
		// Leave the list before dropping the hold: a frame the pump still
		// hands over is then dropped rather than sent. (One that the pump
		// took the list for before the leave may still come after the
		// error, as after an unsubscribe.)
		h.hub.release(s, ch)
		s.dropHold(f.Channel)
		if s.ctx.Err() != nil {
			return nil
		}
		return h.historyError(f.ID, f.Channel, err)
	}
	s.subs[f.Channel] = ch
	h.metrics.subscriptions.Inc()
	result := "recovered"
	if !hist.Recovered {
		result = "not_recovered"
	}
	h.metrics.recoveries.WithLabelValues(result).Inc()
	s.log.Debug("ws: resumed", "channel", f.Channel, "result", result, "messages", len(hist.Messages))
	// The reply and the messages wait for room in the queue (reply): the
	// client asked for them, and they may be more than the queue holds.
	if !s.reply(&outFrame{b: resumedFrame(f.ID, hist.Recovered, len(hist.Messages))}) {
		s.dropHold(f.Channel)
		return nil
	}
	sent := make(map[string]bool, len(hist.Messages))
	for _, m := range hist.Messages {
		id := m.ID()
		sent[id] = true
		if !s.reply(&outFrame{b: encodeMessage(f.Channel, m.Payload, id, m.PublishedAt, m.Position()), msg: true, id: id, pos: m.Position()}) {
			s.dropHold(f.Channel)
			return nil
		}
	}
	s.releaseHold(f.Channel, sent)
	return nil
}

// seed gives a history channel that is opening a position before its first
// message: that of everything in its history now, read after the hub's
// subscription is confirmed on every node, so that a client that subscribes
// and gets no message before it disconnects can still resume (the ok of a
// plain subscribe carries the channel's position). Every message published
// later is either in that read (then covered and, if it came after the
// subscriber joined, also delivered live) or not covered. Without it the
// ok carries no position until the channel's first message. A failed read
// only costs that.
func (b *hub) seed(ctx context.Context, ch *channel) {
	if b.h.limits().doc.For(ch.name).HistorySize == 0 {
		return
	}
	h, err := b.h.client.History(ctx, ch.name, fanout.HistoryOptions{})
	if err != nil {
		if !errors.Is(err, fanout.ErrNoHistory) {
			b.h.log.Warn("ws: reading the position of a history channel failed; its subscribers get none until its first message", "channel", ch.name, "err", err)
		}
		return
	}
	pos := h.Position
	ch.pos.CompareAndSwap(nil, &pos)
}
