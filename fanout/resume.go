package fanout

import (
	"context"
	"fmt"
	"time"
)

// SubscribeOptions tune SubscribeWith.
type SubscribeOptions struct {
	// Since maps channels to the positions to resume them from
	// (Message.Position of the last message the subscriber got). Every
	// message published after it that it does not cover is delivered
	// first, exactly once and in per-publisher order, then the live
	// messages, with no gap and no duplicate at the junction; Recovery
	// says whether that was provably everything. Channels not in Since
	// start live. Default: none.
	Since map[string]string
}

// Recovery is how a channel's resumption went (Subscription.Recovery).
type Recovery struct {
	// Recovered is true when every message after the since position was
	// delivered; false when history no longer covered the whole gap
	// (trimmed, evicted, or held by a node that was lost): what history
	// had was still delivered.
	Recovered bool
	// Messages is how many messages came from history.
	Messages int
}

// resumeSkipWindow is how long after a resume live copies of the messages
// history delivered are dropped: longer than a message takes from its node
// to the client.
const resumeSkipWindow = 30 * time.Second

// maxHeldLive bounds the live messages a resuming subscription holds while
// it reads history; past it the oldest are dropped, counted as overflow,
// and the recovery is reported as not recovered.
const maxHeldLive = 1 << 16

// SubscribeWith subscribes like Subscribe and resumes the channels of
// opts.Since from their positions (docs/history.md): it subscribes live
// first, holding live messages, reads history, delivers what the position
// does not cover, then the held live messages that history did not
// already deliver. A channel in Since whose namespace keeps no history
// fails with ErrNoHistory; a position that does not decode, with
// ErrBadPosition.
func (c *Client) SubscribeWith(ctx context.Context, opts SubscribeOptions, channels ...string) (*Subscription, error) {
	for ch, pos := range opts.Since {
		if _, err := decodePosition(pos); err != nil {
			return nil, fmt.Errorf("%w (channel %s)", err, ch)
		}
		if _, ok := c.historyOf(ch); !ok {
			return nil, fmt.Errorf("%w: %s", ErrNoHistory, ch)
		}
	}
	for ch := range opts.Since {
		found := false
		for _, n := range channels {
			found = found || n == ch
		}
		if !found {
			channels = append(channels, ch)
		}
	}
	s, err := c.subscribeHeld(ctx, channels, len(opts.Since) > 0)
	if err != nil || len(opts.Since) == 0 {
		return s, err
	}
	delivered := map[[2]uint64]bool{}
	rec := map[string]Recovery{}
	for ch, pos := range opts.Since {
		h, err := c.History(ctx, ch, HistoryOptions{Since: pos})
		if err != nil {
			s.Close()
			return nil, fmt.Errorf("fanout: resume %s: %w", ch, err)
		}
		for _, m := range h.Messages {
			delivered[[2]uint64{m.pub, m.seq}] = true
			s.send(m, c.cfg.Overflow, c.m)
		}
		rec[ch] = Recovery{Recovered: h.Recovered, Messages: len(h.Messages)}
	}
	s.release(rec, delivered)
	return s, nil
}

// Recovery reports how channel was resumed; ok is false for a channel
// that was not resumed (not in SubscribeOptions.Since).
func (s *Subscription) Recovery(channel string) (r Recovery, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok = s.recovery[channel]
	return r, ok
}

// subscribeHeld subscribes; with hold, live messages wait in the
// subscription until release.
func (c *Client) subscribeHeld(ctx context.Context, channels []string, hold bool) (*Subscription, error) {
	return c.subscribeOpts(ctx, channels, false, hold)
}

// release delivers the held live messages that history did not, then
// stops holding. Messages that arrive meanwhile are held too and go out
// after, so the live order holds.
func (s *Subscription) release(rec map[string]Recovery, delivered map[[2]uint64]bool) {
	s.mu.Lock()
	if s.heldOverflow {
		for ch, r := range rec {
			r.Recovered = false
			rec[ch] = r
		}
	}
	s.recovery = rec
	for {
		held := s.held
		s.held = nil
		if len(held) == 0 {
			s.holding = false
			// A message history delivered may still come live later (its
			// live copy can lag behind the history read): drop it then.
			if len(delivered) > 0 {
				s.skip, s.skipUntil = delivered, time.Now().Add(resumeSkipWindow)
			}
			s.mu.Unlock()
			return
		}
		s.mu.Unlock()
		for _, m := range held {
			if k := [2]uint64{m.pub, m.seq}; m.pub != 0 && delivered[k] {
				delete(delivered, k) // it came live: it cannot come again
				s.c.m.duplicates.Inc()
				continue
			}
			s.send(m, s.c.cfg.Overflow, s.c.m)
		}
		s.mu.Lock()
	}
}
