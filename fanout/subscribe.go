package fanout

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"
)

// Message is one delivered message.
type Message struct {
	Channel string
	// Pattern is the pattern that matched, for PSubscribe subscriptions.
	Pattern string
	Payload []byte
	// PublishedAt is when Publish was called (zero without an envelope).
	PublishedAt time.Time
	// Node is the id of the node the message came through.
	Node string

	pub, seq uint64    // from the envelope; 0 without one
	prev     uint64    // the publisher's previous message on the channel (envelope)
	pos      string    // the position after this message; "" without history
	tr       *msgTrace // the delivery span of a traced message (trace.go); nil without
}

// Position is where a subscriber of a history channel is after this
// message: pass it as a since position (SubscribeWith, History) to resume
// after it. It is "" on channels without history, for pattern
// subscriptions and for messages without pubmesh's envelope. It is
// opaque (docs/history.md).
func (m *Message) Position() string { return m.pos }

// ID is "<publisher>-<seq>", unique per message; empty for a message
// published without pubmesh's envelope (e.g. by redis-cli). It is formatted
// on each call (most subscribers never ask for it).
func (m *Message) ID() string {
	if m.pub == 0 {
		return ""
	}
	return envelope{pub: m.pub, seq: m.seq}.id()
}

// Subscription receives the messages of its channels or patterns. Its
// methods are safe for concurrent use; Messages has one reader at a time.
type Subscription struct {
	c        *Client
	names    []string
	patterns bool

	// out is buffered (Config.SubscriptionBuffer) and closed by Close,
	// under mu.
	out     chan *Message
	closing chan struct{} // closed first by Close, to free a blocked sender
	// gaps is buffered (gapBuffer) and closed by Close, under mu.
	gaps chan Gap

	mu      sync.Mutex // guards closed, dropped, the holding state and sends on out and gaps
	closed  bool
	dropped uint64
	// holding: SubscribeWith is reading history; live messages wait in
	// held (at most maxHeldLive) until release.
	holding      bool
	held         []*Message
	heldOverflow bool
	recovery     map[string]Recovery
	// skip: after a resume, ids of messages history delivered, dropped if
	// they come live before skipUntil.
	skip      map[[2]uint64]bool
	skipUntil time.Time
	closeOnce sync.Once
}

// Messages returns the channel of delivered messages. It is closed by Close
// (and by Client.Close).
func (s *Subscription) Messages() <-chan *Message { return s.out }

// Gaps returns the channel of Gap events: the client's view of the
// cluster was stale, so messages published between a Gap's Start and End
// may be missing (see Gap). Each gap sends two events, when it opens and
// when it ends; a subscription made during a gap gets the open one. The
// channel buffers 8 events and drops the oldest beyond that (counted in
// pubmesh_fanout_gap_events_dropped_total), so not reading it costs
// nothing. It is closed by Close.
func (s *Subscription) Gaps() <-chan Gap { return s.gaps }

// Dropped is how many messages this subscription discarded because its
// buffer was full (Overflow DropOldest).
func (s *Subscription) Dropped() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.dropped
}

// Names are the channels or patterns of the subscription.
func (s *Subscription) Names() []string { return append([]string(nil), s.names...) }

// Close closes Messages and unsubscribes the names no other Subscription
// of the client holds. It does not wait for the nodes: each node's
// UNSUBSCRIBE is queued behind that node's earlier commands. A second call
// returns ErrClosed.
func (s *Subscription) Close() error { return s.close(true) }

// close closes the subscription; with unsubscribe, the names it was the
// last to hold are unsubscribed on the nodes (Client.Close closes the
// connections instead).
func (s *Subscription) close(unsubscribe bool) error {
	err := ErrClosed
	s.closeOnce.Do(func() {
		err = nil
		close(s.closing)
		gone := s.c.subs.remove(s)
		s.mu.Lock()
		s.closed = true
		close(s.out)
		close(s.gaps)
		s.mu.Unlock()
		if unsubscribe {
			s.c.unsubscribe(gone, s.patterns)
		}
	})
	return err
}

// put hands m to the reader, applying the overflow policy.
func (s *Subscription) put(m *Message, policy Overflow, met *metrics) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	if s.skip != nil {
		if k := [2]uint64{m.pub, m.seq}; m.pub != 0 && s.skip[k] {
			delete(s.skip, k)
			met.duplicates.Inc()
			return
		}
		if len(s.skip) == 0 || time.Now().After(s.skipUntil) {
			s.skip = nil
		}
	}
	if s.holding {
		if len(s.held) == maxHeldLive {
			s.held = s.held[1:]
			s.heldOverflow = true
			s.dropped++
			met.overflowDrops.Inc()
		}
		s.held = append(s.held, m)
		return
	}
	s.sendLocked(m, policy, met)
}

// send hands m to the reader whether or not the subscription holds live
// messages (history during SubscribeWith).
func (s *Subscription) send(m *Message, policy Overflow, met *metrics) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.closed {
		s.sendLocked(m, policy, met)
	}
}

func (s *Subscription) sendLocked(m *Message, policy Overflow, met *metrics) {
	select {
	case s.out <- m:
		met.deliveries.Inc()
		return
	default:
	}
	if policy == Block {
		select {
		case s.out <- m:
			met.deliveries.Inc()
		case <-s.closing:
		}
		return
	}
	select { // drop the oldest; only we send, so there is room afterwards
	case <-s.out:
		s.dropped++
		met.overflowDrops.Inc()
	default:
	}
	s.out <- m
	met.deliveries.Inc()
}

// registry maps channels and patterns to subscriptions.
type registry struct {
	mu       sync.RWMutex
	channels map[string]map[*Subscription]struct{}
	patterns map[string]map[*Subscription]struct{}
	since    map[string]int64 // channel -> when its first current subscriber came
	// canonC and canonP map each subscribed channel and pattern to the
	// registry's string, so a message read from the wire gets its name
	// without an allocation.
	canonC, canonP map[string]string
}

func newRegistry() *registry {
	return &registry{channels: map[string]map[*Subscription]struct{}{}, patterns: map[string]map[*Subscription]struct{}{},
		since: map[string]int64{}, canonC: map[string]string{}, canonP: map[string]string{}}
}

func (r *registry) canonOf(patterns bool) map[string]string {
	if patterns {
		return r.canonP
	}
	return r.canonC
}

func (r *registry) table(patterns bool) map[string]map[*Subscription]struct{} {
	if patterns {
		return r.patterns
	}
	return r.channels
}

// add registers s and returns the names that had no subscriber before.
func (r *registry) add(s *Subscription) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	t := r.table(s.patterns)
	var fresh []string
	now := time.Now().UnixNano()
	for _, n := range s.names {
		if t[n] == nil {
			t[n] = map[*Subscription]struct{}{}
			r.canonOf(s.patterns)[n] = n
			fresh = append(fresh, n)
			if !s.patterns {
				r.since[n] = now
			}
		}
		t[n][s] = struct{}{}
	}
	return fresh
}

// remove unregisters s and returns the names left with no subscriber.
func (r *registry) remove(s *Subscription) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	t := r.table(s.patterns)
	var gone []string
	for _, n := range s.names {
		delete(t[n], s)
		if len(t[n]) == 0 && t[n] != nil {
			delete(t, n)
			delete(r.canonOf(s.patterns), n)
			gone = append(gone, n)
			if !s.patterns {
				delete(r.since, n)
			}
		}
	}
	return gone
}

// subscribedSince is when channel got its first current subscriber (unix
// nanos), 0 when it has none: the floor of the client's positions on it.
func (r *registry) subscribedSince(channel string) int64 {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.since[channel]
}

// names lists every subscribed channel and pattern, sorted.
func (r *registry) names() (chans, pats []string) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	for n := range r.channels {
		chans = append(chans, n)
	}
	for n := range r.patterns {
		pats = append(pats, n)
	}
	sort.Strings(chans)
	sort.Strings(pats)
	return chans, pats
}

// intern returns name as a string: the registry's own when it is
// subscribed (no allocation), else a copy.
func (r *registry) intern(name []byte, pattern bool) string {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if n, ok := r.canonOf(pattern)[string(name)]; ok {
		return n
	}
	return string(name)
}

func (r *registry) has(name string, pattern bool) bool {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.table(pattern)[name] != nil
}

// all returns every subscription once. It is a copy: a caller may close
// them (which takes the registry's lock) as it goes.
func (r *registry) all() []*Subscription {
	r.mu.RLock()
	defer r.mu.RUnlock()
	seen := map[*Subscription]bool{}
	var out []*Subscription
	for _, t := range []map[string]map[*Subscription]struct{}{r.channels, r.patterns} {
		for _, set := range t {
			for s := range set {
				if !seen[s] {
					seen[s] = true
					out = append(out, s)
				}
			}
		}
	}
	return out
}

// each calls fn for every subscription of channel (or pattern, if set).
func (r *registry) each(channel, pattern string, fn func(*Subscription)) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	set := r.channels[channel]
	if pattern != "" {
		set = r.patterns[pattern]
	}
	for s := range set {
		fn(s)
	}
}

// Subscribe subscribes to channels on every live node and returns once the
// subscription is confirmed on each node that answers (nodes that do not
// are subscribed when they come back). Messages published after Subscribe
// returns are delivered. If a node refuses the client's credentials or TLS,
// Subscribe fails with that node's *NodeError (errors.As) rather than
// return a subscription that would miss the node's messages.
func (c *Client) Subscribe(ctx context.Context, channels ...string) (*Subscription, error) {
	return c.subscribe(ctx, channels, false)
}

// PSubscribe subscribes to Redis glob patterns (news.*, user.[ab]?) like
// Subscribe does to channels.
func (c *Client) PSubscribe(ctx context.Context, patterns ...string) (*Subscription, error) {
	return c.subscribe(ctx, patterns, true)
}

func (c *Client) subscribe(ctx context.Context, names []string, patterns bool) (*Subscription, error) {
	return c.subscribeOpts(ctx, names, patterns, false)
}

func (c *Client) subscribeOpts(ctx context.Context, names []string, patterns, hold bool) (*Subscription, error) {
	if c.isClosed() {
		return nil, ErrClosed
	}
	if len(names) == 0 {
		return nil, errors.New("fanout: subscribe: no channels")
	}
	for _, n := range names {
		if err := ValidateChannel(n); err != nil {
			return nil, err
		}
	}
	s := &Subscription{
		c: c, names: dedupStrings(names), patterns: patterns,
		out: make(chan *Message, c.cfg.SubscriptionBuffer), closing: make(chan struct{}), gaps: make(chan Gap, gapBuffer),
		holding: hold,
	}
	fresh := c.subs.add(s)
	if g, open := c.openGapFor(); open {
		s.gap(g, c.m)
	}
	if len(fresh) == 0 {
		return s, nil
	}
	var chans, pats []string
	if patterns {
		pats = fresh
	} else {
		chans = fresh
	}
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	var refusedMu sync.Mutex
	var refused []error
	for _, nc := range c.conns() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// A conn still starting subscribes the current set itself. A
			// node that refuses our credentials or TLS is not waited for.
			ok, rerr := nc.waitSubscribed(ctx)
			if rerr != nil {
				refusedMu.Lock()
				refused = append(refused, rerr)
				refusedMu.Unlock()
			}
			if !ok {
				return
			}
			var err error
			select {
			case err = <-nc.subscribeAsync(chans, pats):
			case <-ctx.Done():
				return
			}
			if err != nil && nc.ctx.Err() == nil {
				select {
				case errs <- err:
				default:
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	if ctx.Err() != nil {
		s.Close()
		return nil, fmt.Errorf("fanout: subscribe: %w", ctx.Err())
	}
	if len(refused) > 0 {
		// This subscriber would silently miss every message published to
		// the node that refused it: say so now rather than later.
		s.Close()
		if len(refused) == 1 {
			return nil, refused[0]
		}
		return nil, errors.Join(refused...)
	}
	for err := range errs {
		c.log.Warn("fanout: subscription not confirmed on a node; it is renewed when the node reconnects", "err", err)
	}
	return s, nil
}

// unsubscribe queues an UNSUBSCRIBE for names that lost their last
// subscription on every node, and returns at once: each node's
// subscription loop sends it in order with that node's other commands,
// and skips the names a Subscribe has taken again meanwhile (the registry
// is the truth), so a racing Subscribe never misses messages.
func (c *Client) unsubscribe(names []string, patterns bool) {
	if len(names) == 0 {
		return
	}
	for _, nc := range c.conns() {
		nc.unsubscribeAsync(names, patterns)
	}
}

func dedupStrings(in []string) []string {
	seen := map[string]bool{}
	out := make([]string, 0, len(in))
	for _, s := range in {
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	return out
}
