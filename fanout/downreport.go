package fanout

import (
	"context"
	"errors"
	"syscall"
	"time"

	"github.com/pubmesh/pubmesh/discovery"
)

// A node whose process is gone refuses connections at once, while its key
// stays in etcd until the agent's lease expires (seconds) when the agent
// died with it. The client uses what it sees first: the node is suspect at
// once (publishes go elsewhere), and the client reports it down in etcd;
// when discovery.DownQuorum clients agree, the node's key is deleted, so
// every client and gateway drops it well before the lease would
// (discovery/down.go says why a refusal, and not a timeout, counts).

// refusedDial reports whether err is a connection the node's host refused:
// nothing listens on the node's port.
func refusedDial(err error) bool { return errors.Is(err, syscall.ECONNREFUSED) }

// noteRefused is called when a subscription connection to a node that had
// answered before could not be made again because the node refused it.
func (nc *nodeConn) noteRefused(err error) {
	nc.markSuspect()
	if nc.retired.Load() || !nc.downReported.CompareAndSwap(false, true) {
		return
	}
	// Counted in the conn's WaitGroup, not the client's: this runs on the
	// conn's subscription loop, which the client's Close waits for through
	// the conn (an Add to the client's WaitGroup here could come while
	// Close already waits on it).
	nc.wg.Add(1)
	go func() {
		defer nc.wg.Done()
		nc.c.reportDown(nc.ctx, nc, err)
	}()
}

// noteAnswered withdraws the client's down report once the node answers
// again (a refusal that passed: the node's Redis restarted in place).
func (nc *nodeConn) noteAnswered() {
	if nc.downReported.CompareAndSwap(true, false) {
		nc.wg.Add(1)
		go func() {
			defer nc.wg.Done()
			nc.c.withdrawDown(nc.ctx, nc.node)
		}()
	}
}

// reportDown writes the client's report and, once enough clients agree,
// removes the node's registration.
func (c *Client) reportDown(ctx context.Context, nc *nodeConn, cause error) {
	p := c.presence.Load()
	if p == nil {
		return
	}
	octx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	reports, clients, err := c.reg.ReportDown(octx, nc.node, c.cfg.ID, p.ID(), cause.Error())
	if err != nil {
		if ctx.Err() == nil {
			c.log.Warn("fanout: could not report a node that refuses connections", "node", nc, "err", err)
		}
		return
	}
	if reports == 0 { // the node's registration is already gone
		return
	}
	c.m.downReports.Inc()
	need := min(int64(discovery.DownQuorum), clients)
	if reports < need {
		c.log.Info("fanout: node refuses connections; reported it down, waiting for another client to agree",
			"node", nc, "reports", reports, "clients", clients, "err", cause)
		return
	}
	removed, err := c.reg.RemoveDown(octx, nc.node)
	if err != nil {
		if ctx.Err() == nil {
			c.log.Warn("fanout: could not remove a node that refuses connections", "node", nc, "err", err)
		}
		return
	}
	if removed {
		c.m.downRemovals.Inc()
		c.log.Warn("fanout: removed a node from the cluster: its connections are refused",
			"node", nc, "reports", reports, "clients", clients, "err", cause)
	}
}

// withdrawDown deletes the client's report about node.
func (c *Client) withdrawDown(ctx context.Context, node discovery.Node) {
	octx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := c.reg.WithdrawDown(octx, node, c.cfg.ID); err != nil && ctx.Err() == nil {
		c.log.Debug("fanout: could not withdraw a down report", "node", node.ID, "err", err)
	}
}
