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
// position (docs/history.md, docs/protocol.md): the connection joins the
// channel's live list first, holding the live frames of that channel for
// itself, then reads history, then sends the ok (recovered, count), the
// messages from history, and the held frames that history did not already
// deliver (by message id); then live frames flow as usual. Every message is
// either in the history read (published before it) or live (published after
// the hub's subscription, which is confirmed on every node before the
// connection joins), or both, and both is sent once: no gap and no duplicate
// at the junction.

// DefaultResumeHold is how many live frames of one channel a connection
// holds while it reads that channel's history. A resume that would hold more
// (a channel busier than the history read is fast) closes the connection
// with 4008 "slow consumer", as a full send queue does: the client then
// resumes again from the last position it got, so nothing is lost, and
// recovered never says true over a gap.
const DefaultResumeHold = 4096

// holds are the channels a connection is resuming. The hub's pump checks
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
	// held runs after the connection joined the live list, before the
	// history read.
	held func(c *conn, channel string)
}

// deliver hands the pump's frame of channel to the connection: to its hold
// while it resumes the channel, else to its send queue.
func (c *conn) deliver(channel string, f *outFrame) {
	if c.holds.count.Load() > 0 && c.hold(channel, f) {
		return
	}
	c.enqueue(f)
}

// hold keeps f if channel is being resumed, and reports whether it did (or
// dropped it: the connection is closing).
func (c *conn) hold(channel string, f *outFrame) bool {
	c.holds.mu.Lock()
	hd := c.holds.m[channel]
	if hd == nil {
		c.holds.mu.Unlock()
		return false
	}
	if hd.sent != nil { // released: only drop what history already sent
		drop := f.id != "" && hd.sent[f.id]
		if drop {
			delete(hd.sent, f.id)
		}
		if len(hd.sent) == 0 || time.Now().After(hd.skipUntil) {
			delete(c.holds.m, channel)
			c.holds.count.Add(-1)
		}
		c.holds.mu.Unlock()
		return drop
	}
	full := len(hd.frames) >= c.h.cfg.resumeHold
	if !full {
		hd.frames = append(hd.frames, f)
	}
	c.holds.mu.Unlock()
	if full && c.close(CloseSlowConsumer, "slow consumer") {
		c.h.metrics.slowConsumers.Inc()
		c.log.Info("ws: closing slow consumer: too many live messages while resuming", "channel", channel, "held", c.h.cfg.resumeHold)
	}
	return true
}

// startHold makes the pump hold channel's frames for c. Called before c
// joins the channel's list.
func (c *conn) startHold(channel string) {
	c.holds.mu.Lock()
	if c.holds.m == nil {
		c.holds.m = make(map[string]*hold)
	}
	c.holds.m[channel] = &hold{}
	c.holds.mu.Unlock()
	c.holds.count.Add(1)
}

// dropHold stops holding channel and discards what was held.
func (c *conn) dropHold(channel string) {
	c.holds.mu.Lock()
	if _, ok := c.holds.m[channel]; ok {
		delete(c.holds.m, channel)
		c.holds.count.Add(-1)
	}
	c.holds.mu.Unlock()
}

// releaseHold sends the held frames of channel, except those whose message
// went out from history (sent), then stops holding. Frames that arrive
// meanwhile are held too and sent after, so the live order holds. It
// reports false when the connection closed meanwhile.
func (c *conn) releaseHold(channel string, sent map[string]bool) bool {
	for {
		c.holds.mu.Lock()
		hd := c.holds.m[channel]
		if hd == nil { // dropped meanwhile (the connection closes)
			c.holds.mu.Unlock()
			return false
		}
		frames := hd.frames
		hd.frames = nil
		if len(frames) == 0 {
			if len(sent) == 0 {
				delete(c.holds.m, channel)
				c.holds.count.Add(-1)
			} else {
				hd.sent, hd.skipUntil = sent, time.Now().Add(resumeSkipWindow)
			}
			c.holds.mu.Unlock()
			return true
		}
		c.holds.mu.Unlock()
		for _, f := range frames {
			if f.id != "" && sent[f.id] {
				delete(sent, f.id) // it came live: it cannot come again
				continue
			}
			if !c.reply(f) {
				c.dropHold(channel)
				return false
			}
		}
	}
}

// resume subscribes to f.Channel from position f.Since. The caller has
// checked access, the namespace's history and the subscription limit.
func (c *conn) resume(f Frame) *Error {
	h := c.h
	c.startHold(f.Channel)
	ch, err := h.hub.subscribe(c.ctx, c, f.Channel, nil)
	if err != nil {
		c.dropHold(f.Channel)
		if c.ctx.Err() != nil {
			return nil // closing: no reply needed
		}
		return &Error{Code: CodeUnavailable, Message: "subscribe failed: " + err.Error(), ID: f.ID}
	}
	if hook := h.cfg.hooks.held; hook != nil {
		hook(c, f.Channel)
	}
	ctx, cancel := context.WithTimeout(c.ctx, h.cfg.OpTimeout)
	hist, err := h.client.History(ctx, f.Channel, fanout.HistoryOptions{Since: f.Since})
	cancel()
	if err != nil {
		// Leave the list before dropping the hold: a frame the pump still
		// hands over is then dropped rather than sent. (One that the pump
		// took the list for before the leave may still come after the
		// error, as after an unsubscribe.)
		h.hub.release(c, ch)
		c.dropHold(f.Channel)
		if c.ctx.Err() != nil {
			return nil
		}
		return h.historyError(f.ID, f.Channel, err)
	}
	c.subs[f.Channel] = ch
	h.metrics.subscriptions.Inc()
	result := "recovered"
	if !hist.Recovered {
		result = "not_recovered"
	}
	h.metrics.recoveries.WithLabelValues(result).Inc()
	c.log.Debug("ws: resumed", "channel", f.Channel, "result", result, "messages", len(hist.Messages))
	// The reply and the messages wait for room in the queue (reply): the
	// client asked for them, and they may be more than the queue holds.
	if !c.reply(&outFrame{b: resumedFrame(f.ID, hist.Recovered, len(hist.Messages))}) {
		c.dropHold(f.Channel)
		return nil
	}
	sent := make(map[string]bool, len(hist.Messages))
	for _, m := range hist.Messages {
		id := m.ID()
		sent[id] = true
		if !c.reply(&outFrame{b: encodeMessage(f.Channel, m.Payload, id, m.PublishedAt, m.Position()), msg: true, id: id}) {
			c.dropHold(f.Channel)
			return nil
		}
	}
	c.releaseHold(f.Channel, sent)
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
