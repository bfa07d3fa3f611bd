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
	c := nc.c
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		c.reportDown(nc, err)
	}()
}

// noteAnswered withdraws the client's down report once the node answers
// again (a refusal that passed: the node's Redis restarted in place).
func (nc *nodeConn) noteAnswered() {
	if nc.downReported.CompareAndSwap(true, false) {
		nc.c.withdrawDown(nc.node)
	}
}

// reportDown writes the client's report and, once enough clients agree,
// removes the node's registration.
func (c *Client) reportDown(nc *nodeConn, cause error) {
	p := c.presence.Load()
	if p == nil {
		return
	}
	ctx, cancel := context.WithTimeout(c.ctx, 5*time.Second)
	defer cancel()
	reports, clients, err := c.reg.ReportDown(ctx, nc.node, c.cfg.ID, p.ID(), cause.Error())
	if err != nil {
		if c.ctx.Err() == nil {
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
	removed, err := c.reg.RemoveDown(ctx, nc.node)
	if err != nil {
		if c.ctx.Err() == nil {
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

// withdrawDown deletes the client's report about node, in the background.
func (c *Client) withdrawDown(node discovery.Node) {
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		ctx, cancel := context.WithTimeout(c.ctx, 5*time.Second)
		defer cancel()
		if err := c.reg.WithdrawDown(ctx, node, c.cfg.ID); err != nil && c.ctx.Err() == nil {
			c.log.Debug("fanout: could not withdraw a down report", "node", node.ID, "err", err)
		}
	}()
}
