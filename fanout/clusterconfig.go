package fanout

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pubmesh/pubmesh/discovery"
)

// ClusterConfig returns the cluster configuration the client runs: the
// newest valid document of <prefix>/<cluster>/config and its revision (0:
// no document, the defaults). It follows etcd within a second of a
// change; a bad document is ignored (see discovery.ConfigWatcher). A
// gateway embedding the client reads its limits and namespace rules here.
func (c *Client) ClusterConfig() discovery.AppliedConfig { return c.conf.Current() }

// ClusterConfigChanged is signalled (capacity one) after each new
// configuration.
func (c *Client) ClusterConfigChanged() <-chan struct{} { return c.conf.Changed() }

// ClusterConfigInvalid is how many configuration revisions the client
// ignored because they did not parse or validate (the metric
// pubmesh_config_invalid_total).
func (c *Client) ClusterConfigInvalid() uint64 { return c.conf.BadRevisions() }

// startConfig reads the configuration and follows it; each new revision
// is written to the client's registration, so pubmesh clients shows who
// caught up.
func (c *Client) startConfig(ctx context.Context) error {
	w, err := c.reg.WatchConfig(ctx, discovery.ConfigWatchOptions{OnChange: func(_, cur discovery.AppliedConfig) {
		c.publishConfigRevision(cur.Revision)
	}})
	if err != nil {
		return err
	}
	c.conf = w
	if c.cfg.Registerer != nil {
		c.cfg.Registerer.MustRegister(
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Namespace: "pubmesh", Name: "config_revision",
				Help: "Revision of the cluster configuration this process runs (0: none in etcd, the defaults).",
			}, func() float64 { return float64(w.Current().Revision) }),
			prometheus.NewCounterFunc(prometheus.CounterOpts{
				Namespace: "pubmesh", Name: "config_invalid_total",
				Help: "Cluster configuration revisions ignored because they did not parse or validate (the last good one stays in force).",
			}, func() float64 { return float64(w.BadRevisions()) }),
		)
	}
	return nil
}

// publishConfigRevision writes rev to the registration. A failure is only
// logged: the registration is written again with the current revision
// when it is renewed.
func (c *Client) publishConfigRevision(rev int64) {
	p := c.presence.Load()
	if p == nil {
		return
	}
	ctx, cancel := context.WithTimeout(c.ctx, 5*time.Second)
	defer cancel()
	if err := p.Update(ctx, func(ci *discovery.ClientInfo) { ci.ConfigRevision = rev }); err != nil && c.ctx.Err() == nil {
		c.log.Warn("fanout: could not record the config revision in etcd", "revision", rev, "err", err)
	}
}
