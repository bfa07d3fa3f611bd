package broker

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"

	"github.com/pubmesh/pubmesh/discovery"
	"github.com/pubmesh/pubmesh/internal/version"
)

// This file is the node's life in the registry: register as joining, the
// JoinGate, ready, leaving (key deleted), a lost lease, and the drain. All of
// it runs on the run goroutine.

// register writes the node as joining under a new lease and starts the
// JoinGate. A failure is retried after a backoff; only a node id held by
// another live agent at start is fatal.
func (a *Agent) register(ctx context.Context, s *runState) error {
	octx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	if s.oldLease != 0 {
		// The lease of a registration we lost may still hold the key (etcd
		// renews leases when it restarts). Revoke it, or Register would see
		// our own old key as another node.
		if _, err := a.reg.Client().Revoke(octx, s.oldLease); err != nil && !errors.Is(err, rpctypes.ErrLeaseNotFound) {
			a.retryRegister(s, err)
			return nil
		}
		s.oldLease = 0
	}
	in, err := s.probe.serverInfo(octx)
	if err != nil {
		a.retryRegister(s, fmt.Errorf("INFO: %w", err))
		return nil
	}
	if in.runID == "" || in.version == "" {
		// Something answers PING on the address but its INFO has no
		// run_id or redis_version: it is not a Redis server, and clients
		// must not be sent there.
		a.retryRegister(s, fmt.Errorf("%s answers PING, but its INFO server has no run_id or redis_version: not a Redis server", a.addr))
		return nil
	}
	started := s.started
	if a.cfg.Attach != "" {
		started = time.Now().Add(-time.Duration(in.uptime) * time.Second).Truncate(time.Second)
	}
	node := discovery.Node{
		ID:           a.cfg.ID,
		Addr:         a.cfg.Advertise,
		State:        discovery.StateJoining,
		StartedAt:    started.UTC(),
		Version:      version.Version,
		RedisVersion: in.version,
		RunID:        in.runID,
		Attached:     a.cfg.Attach != "",
		TLS:          a.cfg.tls(),
		// What the Redis runs; kept current by syncConfig.
		ConfigRevision: s.conf.applied.rev,
	}
	// The run is in etcd before any client can publish to it: Register
	// writes the node only after recordRun, which runs while the lease is
	// granted.
	var runErr error
	reg, err := a.reg.Register(octx, node, discovery.RegisterOptions{TTL: a.cfg.LeaseTTL, Prepare: func(ctx context.Context) error {
		runErr = a.recordRun(ctx, s, in.runID, started)
		return runErr
	}})
	if runErr != nil {
		a.retryRegister(s, fmt.Errorf("record history run: %w", runErr))
		return nil
	}
	if err != nil {
		var fe *discovery.ForeignValueError
		if errors.As(err, &fe) && !s.registered && time.Now().After(s.firstUntil) {
			return fmt.Errorf("broker: node id %q cannot register: %w", a.cfg.ID, fe)
		}
		if errors.Is(err, discovery.ErrNodeExists) && !s.registered && time.Now().After(s.firstUntil) {
			return fmt.Errorf("broker: node id %q is already registered by another live agent (pick another --id)", a.cfg.ID)
		}
		a.retryRegister(s, err)
		return nil
	}
	s.reg, s.regDone, s.registered, s.regBackoff = reg, reg.Done(), true, 0
	if s.drainReq == nil {
		// Drain requests count from this agent's first registration on:
		// one made for an earlier agent with this id never drains this one.
		s.drainReq = a.reg.DrainRequested(ctx, a.cfg.ID, reg.Node().Incarnation)
	}
	a.setNode(reg.Node())
	a.log.Info("registered", "state", node.State, "addr", node.Addr, "run_id", node.RunID, "incarnation", reg.Node().Incarnation)
	gctx, gcancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	s.gateDone, s.gateCancel = done, gcancel
	s.gates.Add(1)
	go func() {
		defer s.gates.Done()
		done <- a.cfg.JoinGate(gctx, reg.Node())
	}()
	// The id is ours now: runs of it left open by an earlier agent are
	// over. This runs while the clients ack the join (the gate's result is
	// read by the run loop after it), so it costs the join no time, and it
	// is done before the node turns ready.
	a.sweepRuns(ctx, s)
	return nil
}

// retryRegister schedules the next registration attempt.
func (a *Agent) retryRegister(s *runState, err error) {
	a.m.registerErrors.Inc()
	s.regBackoff = min(max(s.regBackoff*2, 250*time.Millisecond), 5*time.Second)
	s.nextReg = time.Now().Add(s.regBackoff)
	a.log.Warn("cannot register; trying again", "err", err, "in", s.regBackoff)
}

// joinGateDone turns the node ready once its JoinGate has passed.
func (a *Agent) joinGateDone(ctx context.Context, s *runState, err error) {
	s.gateCancel()
	s.gateDone, s.gateCancel = nil, nil
	if err != nil {
		a.log.Warn("join gate failed; leaving and registering again", "err", err)
		a.leave(s, leaveGate)
		a.retryRegister(s, err)
		return
	}
	octx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	if err := s.reg.SetState(octx, discovery.StateReady); err != nil {
		a.log.Warn("cannot set state ready; leaving and registering again", "err", err)
		a.leave(s, leaveEtcd)
		a.retryRegister(s, err)
		return
	}
	a.setNode(s.reg.Node())
	a.readyOnce.Do(func() { close(a.ready) })
	a.log.Info("ready")
}

// leaseLost handles Registration.Done: the lease expired, usually because
// etcd was unreachable for longer than the TTL, or the node's key was
// deleted by hand while the lease lived (etcdctl del). Either way clients no
// longer see the node, so it registers again (a new incarnation) as soon as
// etcd answers, after revoking the old lease.
func (a *Agent) leaseLost(s *runState) {
	reason := leaveLeaseLost
	if err := s.reg.Err(); errors.Is(err, discovery.ErrKeyDeleted) {
		reason = leaveKeyDeleted
		a.log.Warn("node key deleted from etcd while the agent was running; registering again", "key", a.reg.NodeKey(a.cfg.ID), "incarnation", s.reg.Node().Incarnation)
	} else {
		a.log.Warn("registry lease lost; registering again when etcd answers", "err", err)
	}
	s.oldLease = s.reg.ID()
	a.cancelGate(s)
	s.reg, s.regDone = nil, nil
	s.nextReg = time.Time{}
	a.m.leaves.WithLabelValues(reason).Inc()
	a.setGone()
}

// leave deletes the node's key (revokes its lease) if it has one.
func (a *Agent) leave(s *runState, reason string) {
	a.cancelGate(s)
	if s.reg == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	if err := s.reg.Close(ctx); err != nil {
		// The lease expires by itself within the TTL; revoke it again before
		// the next registration.
		s.oldLease = s.reg.ID()
		a.log.Warn("cannot revoke lease; the key expires with it", "err", err, "ttl", a.cfg.LeaseTTL)
	}
	s.reg, s.regDone = nil, nil
	a.m.leaves.WithLabelValues(reason).Inc()
	a.setGone()
	a.log.Info("left the cluster", "reason", reason)
}

func (a *Agent) cancelGate(s *runState) {
	if s.gateCancel != nil {
		s.gateCancel()
		s.gateDone, s.gateCancel = nil, nil
	}
}

// drain turns the node draining, runs the DrainGate bounded by DrainTimeout
// and by bound, hands the history off (handoff.go, bounded the same way),
// deletes the key and clears the drain request. The deferred cleanup in run
// then stops the child.
func (a *Agent) drain(ctx context.Context, s *runState, bound context.Context) error {
	a.cancelGate(s)
	if s.reg != nil {
		octx, cancel := context.WithTimeout(ctx, opTimeout)
		err := s.reg.SetState(octx, discovery.StateDraining)
		cancel()
		if err != nil {
			a.log.Warn("cannot set state draining; leaving at once", "err", err)
		} else {
			a.setNode(s.reg.Node())
			gctx, gcancel := context.WithTimeout(bound, a.cfg.DrainTimeout)
			stop := context.AfterFunc(ctx, gcancel)
			if err := a.cfg.DrainGate(gctx, s.reg.Node()); err != nil && gctx.Err() == nil {
				a.log.Warn("drain gate failed", "err", err)
			}
			stop()
			gcancel()
			// No client publishes here any more: the history is complete.
			a.handOff(ctx, s, bound)
		}
		a.leave(s, leaveDrain)
	}
	octx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	if err := a.reg.ClearDrain(octx, a.cfg.ID); err != nil {
		a.log.Warn("cannot clear the drain request", "err", err)
	}
	a.log.Info("drained")
	return nil
}
