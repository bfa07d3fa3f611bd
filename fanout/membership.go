package fanout

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/pubmesh/pubmesh/discovery"
	"github.com/pubmesh/pubmesh/internal/version"
)

// register announces the client in etcd under its own lease. It fails,
// wrapping discovery.ErrClientIDTaken, if a live client already has the id:
// sharing one key, the first client to leave would delete the other's
// presence and acks.
func (c *Client) register(ctx context.Context) error {
	host, _ := os.Hostname()
	p, err := c.reg.RegisterClient(ctx, discovery.ClientInfo{
		ID: c.cfg.ID, Host: host, PID: os.Getpid(), StartedAt: time.Now().UTC(), Version: version.Version,
		Role: c.cfg.Role, ConfigRevision: c.conf.Current().Revision,
	}, c.cfg.LeaseTTL)
	if errors.Is(err, discovery.ErrClientIDTaken) {
		return fmt.Errorf("fanout: client id %q is used by another live client (give each client its own Config.ID): %w", c.cfg.ID, err)
	}
	if err != nil {
		return fmt.Errorf("fanout: %w", err)
	}
	c.presence.Store(p)
	if rev := c.conf.Current().Revision; rev != p.Info().ConfigRevision { // changed meanwhile
		c.publishConfigRevision(rev)
	}
	return nil
}

// keepPresence registers the client again if etcd confirms its lease is
// gone (a long etcd outage), and then acks everything again.
func (c *Client) keepPresence() {
	defer c.wg.Done()
	for {
		p := c.presence.Load()
		select {
		case <-c.ctx.Done():
			return
		case <-p.Done():
		}
		c.log.Warn("fanout: client lease lost, registering again", "err", p.Err())
		c.leaseState(true)
		for c.ctx.Err() == nil {
			ctx, cancel := context.WithTimeout(c.ctx, 5*time.Second)
			err := c.register(ctx)
			cancel()
			if err == nil {
				break
			}
			sleep(c.ctx, time.Second)
		}
		for _, nc := range c.conns() {
			nc.acked.Store("")
		}
		c.leaseState(false)
		c.membershipChanged()
	}
}

// membershipChanged asks the membership loop to look at acks again.
func (c *Client) membershipChanged() {
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

// follow applies every snapshot until the client closes.
func (c *Client) follow(snaps <-chan discovery.Snapshot) {
	defer c.wg.Done()
	for {
		select {
		case <-c.ctx.Done():
			return
		case s, ok := <-snaps:
			if !ok {
				return
			}
			c.apply(s)
			c.snapshotApplied(s)
		case <-c.kick:
			c.connMu.Lock()
			s := c.snap
			c.connMu.Unlock()
			c.apply(s)
			c.snapshotApplied(s)
		}
	}
}

// apply makes the connections match snapshot s, rebuilds the ready set and
// sends the acks the snapshot calls for.
func (c *Client) apply(s discovery.Snapshot) {
	c.connMu.Lock()
	defer c.connMu.Unlock()
	c.snap = s
	live := make(map[string]bool, len(s.Nodes))
	for _, n := range s.Nodes {
		live[n.ID] = true
		nc := c.nodes[n.ID]
		if nc != nil && (nc.node.Incarnation != n.Incarnation || nc.node.RunID != n.RunID || nc.node.Addr != n.Addr) {
			if nc.node.RunID != n.RunID {
				c.endRun(nc.node) // its Redis restarted: the run's history is gone
			}
			c.retire(nc) // a new registration of the node: start afresh
			nc = nil
		}
		if nc == nil {
			nc = newNodeConn(c, n)
			c.nodes[n.ID] = nc
			nc.launch()
		}
		nc.state.Store(n.State)
	}
	if !s.Stale { // an outage says nothing about the nodes: keep them
		for id, nc := range c.nodes {
			if !live[id] {
				c.endRun(nc.node)
				c.retire(nc)
			}
		}
	}
	rs := &readySet{}
	counts := map[discovery.State]float64{}
	for _, n := range s.Nodes {
		counts[n.State]++
		if nc := c.nodes[n.ID]; n.State == discovery.StateReady && nc != nil {
			rs.conns = append(rs.conns, nc)
			rs.seeds = append(rs.seeds, nc.seed)
		}
	}
	for _, st := range []discovery.State{discovery.StateJoining, discovery.StateReady, discovery.StateDraining} {
		c.m.nodes.WithLabelValues(string(st)).Set(counts[st])
	}
	c.ready.Store(rs)
	close(c.readyC)
	c.readyC = make(chan struct{})
	for _, nc := range c.nodes {
		c.ackIfDue(nc)
	}
}

// endRun records in etcd that node's Redis run ended, unless its agent did
// first (a drain that handed its history off ends the run itself, before
// the node leaves, and the first end stays): recoveries across a run that
// ended without a hand-off cannot be proven complete (docs/history.md). A
// node whose key went while its Redis lives on (its agent restarted, its
// key deleted by hand) comes back with the same run and lost nothing: the
// end waits two LeaseTTLs for that, and is not written if the run is back.
func (c *Client) endRun(node discovery.Node) {
	if node.RunID == "" {
		return
	}
	at := time.Now()
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		sleep(c.ctx, 2*c.cfg.LeaseTTL)
		for _, n := range c.Nodes().Nodes {
			if n.RunID == node.RunID {
				return
			}
		}
		ctx, cancel := context.WithTimeout(c.ctx, 5*time.Second)
		defer cancel()
		err := c.reg.EndRun(ctx, node.RunID, at, false)
		if err != nil && !errors.Is(err, discovery.ErrRunEnded) && !errors.Is(err, discovery.ErrRunNotFound) && c.ctx.Err() == nil {
			c.log.Warn("fanout: could not record that a node run ended", "node", node.ID, "run_id", node.RunID, "err", err)
		}
	}()
}

// retire removes nc (called under connMu) and closes it after RemoveGrace,
// so messages still in flight from the node are read.
func (c *Client) retire(nc *nodeConn) {
	delete(c.nodes, nc.node.ID)
	nc.retired.Store(true)
	if nc.downReported.Load() {
		// apply runs on the membership goroutine, which Close waits for:
		// adding to the client's WaitGroup here is safe.
		c.wg.Add(1)
		go func() {
			defer c.wg.Done()
			c.withdrawDown(c.ctx, nc.node)
		}()
	}
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		// The grace (reading what the node still sends) ends early when
		// the client closes: nobody reads those messages then, and Close
		// must not wait RemoveGrace for a node that happened to leave.
		nc.release(c.ctx)
		sleep(c.ctx, c.cfg.RemoveGrace)
		nc.close(0)
	}()
}

// ackIfDue writes the ack a node's state calls for, once per state of each
// registration (a new registration gets a new nodeConn):
// subscribed for a joining or ready node once our subscriptions there are
// confirmed; released for a draining node once nothing is in flight to it.
func (c *Client) ackIfDue(nc *nodeConn) {
	st := nc.getState()
	want := discovery.AckSubscribed
	if st == discovery.StateDraining {
		want = discovery.AckReleased
	}
	tag := string(want)
	if nc.acked.Load().(string) == tag {
		return
	}
	if want == discovery.AckSubscribed {
		select {
		case <-nc.subscribed:
		default:
			return // subLoop kicks us again once subscribed
		}
	}
	nc.acked.Store(tag)
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		if want == discovery.AckReleased {
			if err := nc.release(c.ctx); err != nil {
				return
			}
		}
		for attempt := 0; c.ctx.Err() == nil; attempt++ {
			// The latest registration: one lost while this retried is
			// replaced (keepPresence), and acks under it would fail forever.
			p := c.presence.Load()
			ctx, cancel := context.WithTimeout(c.ctx, 2*time.Second)
			err := p.Ack(ctx, nc.node.ID, discovery.Ack{RunID: nc.node.RunID, Incarnation: nc.node.Incarnation, State: want})
			cancel()
			if err == nil || c.ctx.Err() != nil { // done, or the client is closing
				return
			}
			c.m.ackTimeouts.Inc()
			if attempt == 0 {
				c.log.Warn("fanout: ack failed, retrying", "node", nc, "state", want, "err", err)
			}
			sleep(c.ctx, 250*time.Millisecond)
		}
	}()
}
