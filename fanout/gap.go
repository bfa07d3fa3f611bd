package fanout

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/pubmesh/pubmesh/discovery"
)

// Gap tells a subscriber that it may have missed messages: the client's
// view of the cluster was out of date, so nodes may have joined (and
// become the home of some channels) without the client subscribing there.
//
// It happens when the client is cut off from etcd but not from the nodes:
// its lease expires, a joining node stops waiting for its ack, turns ready
// and takes publishes that this client does not see. A Gap is sent twice
// on each Subscription: when it opens (End is zero) and when the client
// has re-synced with etcd and is subscribed on every node again (End set).
// Messages published between Start and End may be missing.
type Gap struct {
	// Reason says why, e.g. "etcd unreachable: ..." or "client lease lost".
	Reason string
	// Start is when the client first saw its membership go stale.
	Start time.Time
	// End is when the client had re-synced; zero while the gap lasts.
	End time.Time
}

func (g Gap) String() string {
	if g.End.IsZero() {
		return fmt.Sprintf("gap since %s: %s", g.Start.Format(time.RFC3339Nano), g.Reason)
	}
	return fmt.Sprintf("gap from %s to %s: %s", g.Start.Format(time.RFC3339Nano), g.End.Format(time.RFC3339Nano), g.Reason)
}

// gapBuffer is how many Gap events each Subscription buffers; beyond it
// the oldest is dropped and counted (pubmesh_fanout_gap_events_dropped_total).
const gapBuffer = 8

// staleness tracks whether the client's membership may be out of date.
//
// An etcd outage alone loses nothing: no node can join without the
// client's ack while its lease lives (the join handshake waits for it).
// So a gap opens when etcd has not answered for LeaseTTL (the lease may
// have expired since), or at once when the lease is confirmed lost; its
// Start is the last time etcd confirmed the client's lease (no node could
// join without the client before that time plus LeaseTTL). It closes once etcd
// answers again, the client is registered, and every node of the fresh
// snapshot has confirmed the client's subscriptions.
type staleness struct {
	mu        sync.Mutex // guards all fields
	etcdSince time.Time  // the current outage's start: the lease's last confirmation before the first stale snapshot; zero while etcd answers
	etcdErr   error
	timer     *time.Timer // opens the gap LeaseTTL after etcdSince
	leaseLost bool        // the client's lease is gone and not yet registered again
	open      *Gap        // the gap subscribers were told of; nil if none
	gen       uint64      // counts opened gaps, so an old re-sync never closes a newer one
}

// snapshotApplied updates the state after apply(s); called by the
// membership loop.
func (c *Client) snapshotApplied(s discovery.Snapshot) {
	st := &c.stale
	st.mu.Lock()
	defer st.mu.Unlock()
	if s.Stale {
		if st.etcdSince.IsZero() {
			// The watch notices an outage late (a list has to time out),
			// while the lease runs from the last time etcd confirmed it: a
			// node may join without this client from that time plus
			// LeaseTTL on. So the gap starts then, and opens by then.
			since := time.Now()
			if p := c.presence.Load(); p != nil {
				if t := p.Confirmed(); t.Before(since) {
					since = t
				}
			}
			st.etcdSince, st.etcdErr = since, s.Err
			st.timer = time.AfterFunc(max(0, time.Until(since.Add(c.cfg.LeaseTTL))), func() {
				st.mu.Lock()
				defer st.mu.Unlock()
				if st.etcdSince.Equal(since) && c.ctx.Err() == nil {
					c.openGap(fmt.Sprintf("etcd unreachable for %s: %v", c.cfg.LeaseTTL, st.etcdErr), since)
				}
			})
		}
		return
	}
	if st.timer != nil {
		st.timer.Stop()
		st.timer = nil
	}
	st.etcdSince, st.etcdErr = time.Time{}, nil
	if st.open != nil && !st.leaseLost {
		c.resync(st.gen)
	}
}

// leaseState records that the client's lease was lost (it is registered
// again later, then lost is false).
func (c *Client) leaseState(lost bool) {
	st := &c.stale
	st.mu.Lock()
	defer st.mu.Unlock()
	st.leaseLost = lost
	if lost {
		since := st.etcdSince
		if since.IsZero() {
			since = time.Now()
		}
		c.openGap("client lease lost: nodes may have joined without this client's ack", since)
	}
}

// openGap tells every subscription, under st.mu.
func (c *Client) openGap(reason string, since time.Time) {
	st := &c.stale
	if st.open != nil {
		return
	}
	st.gen++
	st.open = &Gap{Reason: reason, Start: since}
	c.m.memberGaps.Inc()
	c.m.stale.Set(1)
	c.log.Warn("fanout: membership may be stale; subscribers may miss messages until the client re-syncs with etcd", "reason", reason, "since", since)
	for _, s := range c.subs.all() {
		s.gap(*st.open, c.m)
	}
}

// resync waits, in the background, until every node of the current
// snapshot has confirmed the client's subscriptions (or refused or failed
// its first try), then closes gap gen. Called under st.mu.
func (c *Client) resync(gen uint64) {
	conns := c.conns()
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		ctx, cancel := context.WithTimeout(c.ctx, time.Minute)
		defer cancel()
		for _, nc := range conns {
			nc.waitSubscribed(ctx)
		}
		if !c.leaseAlive(ctx) {
			return // keepPresence registers again, then re-syncs
		}
		st := &c.stale
		st.mu.Lock()
		defer st.mu.Unlock()
		if st.open == nil || st.gen != gen || st.leaseLost || !st.etcdSince.IsZero() {
			return
		}
		g := *st.open
		g.End = time.Now()
		st.open = nil
		c.m.stale.Set(0)
		c.log.Info("fanout: membership re-synced with etcd", "gap", g.String())
		for _, s := range c.subs.all() {
			s.gap(g, c.m)
		}
	}()
}

// leaseAlive asks etcd whether the client's lease still exists, until
// etcd answers or ctx ends: a gap must not close while the lease is gone
// (nodes still join without this client's ack), nor on a lease that the
// client has yet to find lost.
func (c *Client) leaseAlive(ctx context.Context) bool {
	for ctx.Err() == nil {
		p := c.presence.Load()
		tctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		ttl, err := c.etcd.TimeToLive(tctx, p.ID())
		cancel()
		if err == nil {
			return ttl.TTL > 0
		}
		sleep(ctx, 250*time.Millisecond)
	}
	return false
}

// openGapFor is the open gap, for a new Subscription.
func (c *Client) openGapFor() (Gap, bool) {
	st := &c.stale
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.open == nil {
		return Gap{}, false
	}
	return *st.open, true
}

// staleSince reports whether membership is stale now, since when and why.
func (c *Client) staleSince() (bool, time.Time, string) {
	st := &c.stale
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.open == nil {
		return false, time.Time{}, ""
	}
	return true, st.open.Start, st.open.Reason
}

// stopStale stops the gap timer; called by Close.
func (c *Client) stopStale() {
	st := &c.stale
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.timer != nil {
		st.timer.Stop()
		st.timer = nil
	}
}

// gap hands g to the reader of Gaps, dropping the oldest buffered event
// if the reader is behind.
func (s *Subscription) gap(g Gap, m *metrics) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	select {
	case s.gaps <- g:
		return
	default:
	}
	select {
	case <-s.gaps:
		m.gapDrops.Inc()
	default:
	}
	s.gaps <- g
}
