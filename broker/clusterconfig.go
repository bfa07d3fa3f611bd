package broker

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/pubmesh/pubmesh/clusterconfig"
	"github.com/pubmesh/pubmesh/discovery"
)

// This file is how the agent follows the cluster configuration: it watches
// it from start to stop (discovery.ConfigWatcher) and applies its node
// section to the Redis with CONFIG SET, live, without a restart. All of it
// runs on the run goroutine.
//
// When a change is applied:
//   - a new revision: at once (the watcher signals it within a second);
//   - a CONFIG SET that failed (an attached Redis whose user may not use
//     CONFIG, a Redis that does not answer): again on the health ticks,
//     with a backoff of 1s doubling to 30s, and at once on the next
//     revision; each failure is logged and counted
//     (pubmesh_node_config_apply_errors_total);
//   - a restarted child: its redis.conf is written with the values in
//     force, so it starts with them;
//   - an attached Redis: before each registration, since it may have been
//     restarted with its own configuration while the node was away.
//
// The revision is recorded in the node's registration (Node.ConfigRevision)
// once the Redis runs it, and in the pubmesh_config_revision gauge.

// redisSettings are the values the agent sets on its Redis.
type redisSettings struct {
	limit     BufferLimit // client-output-buffer-limit pubsub
	maxMemory int64       // maxmemory in bytes; 0: no limit
	policy    string      // maxmemory-policy: always memoryPolicy
}

// memoryPolicy is the maxmemory-policy of every node: a full node evicts
// the history streams (every one has a TTL) closest to their expiry first,
// and never a key without a TTL. Pub/sub itself uses no keys. See
// docs/history.md, "Bounds and memory".
const memoryPolicy = "volatile-ttl"

// redisSettings are what the agent applies for doc: its node section, with
// the Config's overrides.
func (c Config) redisSettings(doc *clusterconfig.Document) redisSettings {
	rs := redisSettings{limit: doc.Node.OutputBufferLimit, maxMemory: int64(doc.Node.MaxMemory), policy: memoryPolicy}
	if c.OutputBufferLimit != (BufferLimit{}) {
		rs.limit = c.OutputBufferLimit
	}
	switch {
	case c.MaxMemory > 0:
		rs.maxMemory = c.MaxMemory
	case c.MaxMemory < 0:
		rs.maxMemory = 0
	}
	return rs
}

// appliedConfig is what the Redis runs, as far as the agent knows.
type appliedConfig struct {
	rev     int64         // the configuration revision fully applied
	rs      redisSettings // the values set
	unknown bool          // the values are not known (an attached Redis): set them all
}

// configState is the run goroutine's view of the cluster configuration.
type configState struct {
	w        *discovery.ConfigWatcher // nil until the configuration was first read
	changed  <-chan struct{}          // w.Changed(), nil without w
	nextOpen time.Time                // no WatchConfig before this
	openWait time.Duration

	applied   appliedConfig
	admin     *probe // where CONFIG SET goes: the health probe, or agentUser's own
	agentPass string // agentUser's password; "" when the probe's user may CONFIG SET

	failedRev int64     // the revision whose apply failed last
	nextApply time.Time // after a failure, no retry of failedRev before this
	applyWait time.Duration

	recordFailed int64 // the revision whose recording in etcd failed and was logged
}

// logOverrides says, once at start, which of the cluster configuration's
// keys this agent's Config overrides.
func (a *Agent) logOverrides() {
	const msg = "config: flag overrides the cluster configuration"
	if a.cfg.OutputBufferLimit != (BufferLimit{}) {
		a.log.Info(msg, "key", "node.output_buffer_limit", "value", a.cfg.OutputBufferLimit.String())
	}
	if a.cfg.MaxMemory != 0 {
		a.log.Info(msg, "key", "node.maxmemory", "value", max(a.cfg.MaxMemory, 0))
	}
}

// openConfig starts the configuration watcher, unless it runs or its last
// attempt failed less than a backoff ago. Until it works the node runs the
// defaults (with the Config's overrides): a node must not stay down because
// it cannot read its limits.
func (a *Agent) openConfig(ctx context.Context, c *configState) bool {
	if c.w != nil {
		return true
	}
	if time.Now().Before(c.nextOpen) {
		return false
	}
	octx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	w, err := a.reg.WatchConfig(octx, discovery.ConfigWatchOptions{})
	if err != nil {
		if ctx.Err() == nil {
			c.openWait = min(max(c.openWait*2, time.Second), 30*time.Second)
			c.nextOpen = time.Now().Add(c.openWait)
			a.log.Warn("cannot read the cluster configuration; running the defaults until it can", "err", err, "retry_in", c.openWait)
		}
		return false
	}
	c.w, c.changed = w, w.Changed()
	a.m.configWatcher.Store(w)
	cur := w.Current()
	a.log.Info("following the cluster configuration", "revision", cur.Revision)
	return true
}

// close stops the watcher and the agent user's connection.
func (c *configState) close() {
	if c.w != nil {
		c.w.Close()
	}
	if c.admin != nil {
		c.admin.close()
	}
}

// current is the configuration in force: the watcher's, or the defaults.
func (c *configState) current() discovery.AppliedConfig {
	if c.w == nil {
		return discovery.AppliedConfig{Doc: clusterconfig.Defaults()}
	}
	return c.w.Current()
}

// childStarting returns what a child about to start must run, and records
// it as applied: its redis.conf is written from it.
func (a *Agent) childStarting(c *configState) redisSettings {
	cur := c.current()
	rs := a.cfg.redisSettings(cur.Doc)
	c.applied = appliedConfig{rev: cur.Revision, rs: rs}
	a.m.configRevision.Store(cur.Revision)
	return rs
}

// syncConfig brings the Redis and the registration up to the configuration
// in force. It is called when the watcher signals a change and on every
// health tick where the Redis answers; it does nothing when all is current.
func (a *Agent) syncConfig(ctx context.Context, s *runState) {
	c := &s.conf
	// Without the configuration (etcd refused the read) the defaults are
	// in force: a child runs them already, an attached Redis gets them.
	a.openConfig(ctx, c)
	if a.cfg.Attach == "" && s.child == nil {
		return // the next start writes the values into redis.conf
	}
	cur := c.current()
	want := a.cfg.redisSettings(cur.Doc)
	if c.applied.unknown || want != c.applied.rs {
		if cur.Revision == c.failedRev && time.Now().Before(c.nextApply) {
			return
		}
		if err := a.setRedis(ctx, c, want); err != nil {
			if ctx.Err() != nil {
				return
			}
			a.m.configApply.Inc()
			c.failedRev = cur.Revision
			c.applyWait = min(max(c.applyWait*2, time.Second), 30*time.Second)
			c.nextApply = time.Now().Add(c.applyWait)
			a.log.Warn("cannot apply the cluster configuration to redis; retrying", "revision", cur.Revision, "err", err, "retry_in", c.applyWait)
			return
		}
		c.applyWait, c.failedRev = 0, 0
		a.log.Info("applied the cluster configuration to redis", "revision", cur.Revision,
			"output_buffer_limit", want.limit.String(), "maxmemory", want.maxMemory)
	}
	if c.applied.rev != cur.Revision {
		c.applied.rev = cur.Revision
		a.m.configRevision.Store(cur.Revision)
	}
	a.recordRevision(ctx, s)
}

// setRedis sets the values of want that differ from what the Redis runs
// (maxmemory-policy too),
// one CONFIG SET each (an older Redis takes one parameter per call).
func (a *Agent) setRedis(ctx context.Context, c *configState, want redisSettings) error {
	if c.applied.unknown || want.limit != c.applied.rs.limit {
		if _, err := c.admin.do(ctx, "CONFIG", "SET", "client-output-buffer-limit", "pubsub "+want.limit.String()); err != nil {
			return fmt.Errorf("CONFIG SET client-output-buffer-limit: %w", err)
		}
		c.applied.rs.limit = want.limit
	}
	if c.applied.unknown || want.maxMemory != c.applied.rs.maxMemory {
		if _, err := c.admin.do(ctx, "CONFIG", "SET", "maxmemory", strconv.FormatInt(want.maxMemory, 10)); err != nil {
			return fmt.Errorf("CONFIG SET maxmemory: %w", err)
		}
		c.applied.rs.maxMemory = want.maxMemory
	}
	// A child starts with the policy in its redis.conf; an attached Redis
	// gets it here, with its maxmemory.
	if c.applied.unknown || want.policy != c.applied.rs.policy {
		if _, err := c.admin.do(ctx, "CONFIG", "SET", "maxmemory-policy", want.policy); err != nil {
			return fmt.Errorf("CONFIG SET maxmemory-policy: %w", err)
		}
		c.applied.rs.policy = want.policy
	}
	c.applied.unknown = false
	return nil
}

// recordRevision writes the applied revision into the node's registration,
// if it has one that says otherwise. A failure is logged once per revision
// and retried on the next health tick.
func (a *Agent) recordRevision(ctx context.Context, s *runState) {
	rev := s.conf.applied.rev
	if s.reg == nil || s.reg.Node().ConfigRevision == rev {
		return
	}
	octx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	if err := s.reg.Update(octx, func(n *discovery.Node) { n.ConfigRevision = rev }); err != nil {
		if ctx.Err() == nil && s.conf.recordFailed != rev {
			s.conf.recordFailed = rev
			a.log.Warn("cannot record the config revision in etcd; retrying", "revision", rev, "err", err)
		}
		return
	}
	s.conf.recordFailed = 0
	a.setNode(s.reg.Node())
}
