package fanout

import (
	"context"
	"fmt"
	"sync"
)

// Reads of one channel's history from the same stream id are shared:
// after a gateway restart a thousand clients resume the same channels from
// the same positions, and reading each time would queue them for seconds
// (the read is the same; only what each covers differs, which readHistory
// works out per caller). A read serves only the calls that came before it
// started, never one that joins it half-way: a call's read must begin
// after the call, or a message published just before the call (and before
// its subscription, if it resumes one) could be missing from both the
// read and the live stream. So calls that come while a read is running
// wait for the next one, which starts when it ends and serves them all.

// histKey names one shared read.
type histKey struct{ channel, start string }

// histRound is one read and the calls it serves.
type histRound struct {
	done     chan struct{}
	entries  []histEntry // shared: readers never modify them
	complete bool
	err      error
}

// histFlights is the client's table of running and waiting reads.
type histFlights struct {
	mu     sync.Mutex
	states map[histKey]*histFlight
}

type histFlight struct {
	running *histRound // the read in progress
	next    *histRound // calls that came while it ran: read when it ends
}

// sharedStreams is readStreams shared as described above.
func (c *Client) sharedStreams(ctx context.Context, channel, start string, o histOpts) ([]histEntry, bool, error) {
	f := &c.histFlights
	k := histKey{channel, start}
	f.mu.Lock()
	if f.states == nil {
		f.states = map[histKey]*histFlight{}
	}
	st := f.states[k]
	if st == nil {
		st = &histFlight{}
		f.states[k] = st
	}
	var r *histRound
	if st.running == nil {
		r = &histRound{done: make(chan struct{})}
		st.running = r
		f.mu.Unlock()
		go c.runHistRound(k, r, o)
	} else {
		if st.next == nil {
			st.next = &histRound{done: make(chan struct{})}
		}
		r = st.next
		f.mu.Unlock()
		c.m.historySharedReads.Inc()
	}
	select {
	case <-r.done:
		return r.entries, r.complete, r.err
	case <-ctx.Done():
		return nil, false, fmt.Errorf("fanout: history of %s: %w", channel, ctx.Err())
	}
}

// runHistRound reads for r, then starts the round that waited, if any.
// The read is bounded by the client's life and PublishTimeout per
// command, not by one caller's context: it serves them all.
func (c *Client) runHistRound(k histKey, r *histRound, o histOpts) {
	for r != nil {
		c.m.historyReads.Inc()
		r.entries, r.complete, r.err = c.readStreams(c.ctx, k.channel, k.start, o)
		close(r.done)
		f := &c.histFlights
		f.mu.Lock()
		st := f.states[k]
		st.running, st.next = st.next, nil
		r = st.running
		if r == nil {
			delete(f.states, k)
		}
		f.mu.Unlock()
	}
}
