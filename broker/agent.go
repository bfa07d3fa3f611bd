package broker

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/pubmesh/pubmesh/discovery"
)

// ErrClosed is returned by Run when the Agent was shut down before Run
// started.
var ErrClosed = errors.New("broker: agent shut down")

// opTimeout bounds one etcd call of the agent (register, state change,
// revoke), so an unreachable etcd delays the agent but never hangs it.
const opTimeout = 2 * time.Second

// restartResetAfter is how long a child must have run for the restart
// backoff to start over at Config.RestartBackoff.
const restartResetAfter = 10 * time.Second

// Agent runs one pubmesh node: it supervises a redis-server child (or
// watches an attached Redis), registers it in the registry, reports its
// state, and drains it on request. See the package doc for the life cycle.
//
// Run is the root of the agent's goroutines; the goroutine that calls Run
// is the only one that starts, stops or restarts the child. The other
// methods are safe for concurrent use.
type Agent struct {
	cfg  Config
	reg  *discovery.Registry
	log  *slog.Logger
	m    *metrics
	addr string // where the agent PINGs: the child's bind:port, or Attach

	peerTLS *tls.Config // how a drain's hand-off connects to other nodes; nil: plain TCP

	ready     chan struct{} // closed by Run the first time the node is ready
	readyOnce sync.Once
	done      chan struct{} // closed when Run returns
	shutdown  chan struct{} // closed by the first Shutdown

	mu          sync.Mutex // guards the fields below
	running     bool
	closed      bool
	shutdownCtx context.Context // the first Shutdown's ctx; bounds the drain
	node        discovery.Node  // as last registered
	state       discovery.State // "" while the node has no key
	pid         int             // the child's pid, 0 when none
}

// New checks cfg (see Config.Validate), registers the agent's metrics on
// cfg.Registerer and returns an Agent that does nothing until Run.
func New(cfg Config) (*Agent, error) {
	if cfg.Registry == nil {
		return nil, errors.New("broker: Config.Registry is required")
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	peerTLS, err := cfg.peerTLS()
	if err != nil {
		return nil, err
	}
	addr := cfg.Attach
	if addr == "" {
		addr = net.JoinHostPort(cfg.Bind, strconv.Itoa(cfg.Port))
	}
	return &Agent{
		cfg:      cfg,
		reg:      cfg.Registry,
		log:      cfg.Logger.With("node", cfg.ID),
		m:        m,
		addr:     addr,
		peerTLS:  peerTLS,
		ready:    make(chan struct{}),
		done:     make(chan struct{}),
		shutdown: make(chan struct{}),
	}, nil
}

// ID is the node id.
func (a *Agent) ID() string { return a.cfg.ID }

// Addr is the address clients dial, as registered.
func (a *Agent) Addr() string { return a.cfg.Advertise }

// Ready is closed the first time the node turns ready.
func (a *Agent) Ready() <-chan struct{} { return a.ready }

// Done is closed when Run has returned and the child has stopped.
func (a *Agent) Done() <-chan struct{} { return a.done }

// State is the node's state in the registry, or "" while it has no key
// (starting, unhealthy, restarting, or stopped).
func (a *Agent) State() discovery.State {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.state
}

// Node is the registry value as last written.
func (a *Agent) Node() discovery.Node {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.node
}

// PID is the redis-server child's process id, or 0 when there is none
// (attached, restarting or stopped).
func (a *Agent) PID() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.pid
}

// Shutdown drains the node and stops the agent: the node turns draining,
// DrainGate runs (bounded by DrainTimeout and by ctx), the history is
// handed off to the other ready nodes (bounded the same way), the lease is
// revoked so the key is gone, and the child is stopped. It returns once Run has
// returned, which is at most StopTimeout plus a few etcd calls after ctx
// ends, so no child outlives it; it returns ctx.Err() if ctx ended first.
// It may be called more than once and before or without Run.
func (a *Agent) Shutdown(ctx context.Context) error {
	a.mu.Lock()
	if !a.closed {
		a.closed = true
		a.shutdownCtx = ctx
		close(a.shutdown)
	}
	running := a.running
	a.mu.Unlock()
	if !running {
		return nil
	}
	select {
	case <-a.done:
		return nil
	case <-ctx.Done():
		<-a.done
		return ctx.Err()
	}
}

// Run starts the node and keeps it running until it is drained (by
// Registry.RequestDrain or Shutdown), then returns nil. If ctx is cancelled
// it stops at once, without the drain wait: it revokes the lease, stops the
// child and returns ctx.Err(). It first waits for etcd to answer, logging
// "waiting for etcd" with a backoff, so a node may start before etcd does
// (give it a Registry on a client from discovery.Connect, which does not
// require etcd to answer). It fails at start, with a one-line error, when
// the port is taken, the redis-server cannot start, or another live agent
// holds the node id. Once started, Redis crashes, hangs and etcd outages are
// handled, not returned. Only a drain requested for one of this Run's own
// registrations drains it (see discovery.Registry.DrainRequested).
func (a *Agent) Run(ctx context.Context) error {
	a.mu.Lock()
	switch {
	case a.closed:
		if !a.running {
			// Shutdown came before Run: this Run is the one, and it is
			// over, so Done closes (a caller waiting on it after Shutdown
			// and Run must not hang).
			a.running = true
			close(a.done)
		}
		a.mu.Unlock()
		return ErrClosed
	case a.running:
		a.mu.Unlock()
		return errors.New("broker: Run called twice")
	}
	a.running = true
	a.mu.Unlock()
	defer close(a.done)
	return a.run(ctx)
}

// runState is what the run goroutine owns.
type runState struct {
	dir       string        // the child's data dir, holding its redis.conf
	child     *process      // nil when attached or not running
	childDone chan struct{} // child.done, or nil
	restartC  <-chan time.Time
	backoff   time.Duration // the next restart wait
	started   time.Time     // the Redis's start, for Node.StartedAt

	reg        *discovery.Registration
	regDone    <-chan struct{}
	oldLease   clientv3.LeaseID // a lost lease, revoked before the next Register
	nextReg    time.Time        // no Register before this
	regBackoff time.Duration
	registered bool      // registered at least once
	firstUntil time.Time // before the first registration, how long ErrNodeExists is retried

	// drainReq closes when a drain is requested for one of this agent's
	// registrations; nil until the first one.
	drainReq <-chan struct{}

	gateDone   chan error // the JoinGate's result; nil unless one runs
	gateCancel context.CancelFunc
	gates      sync.WaitGroup

	health health
	probe  *probe

	conf configState

	runs  runsState // the node's runs in etcd (historyruns.go)
	evict evictions // INFO evicted_keys, for the metric
}

func (a *Agent) run(ctx context.Context) error {
	cfg := a.cfg
	s := &runState{
		backoff:    cfg.RestartBackoff,
		health:     health{limit: cfg.HealthFailures},
		firstUntil: time.Now().Add(cfg.LeaseTTL + time.Second),
		probe:      newProbe(a.addr, cfg.HealthTimeout, cfg.Username, cfg.Password),
	}
	defer s.probe.close()
	s.conf.admin = s.probe
	s.conf.applied.unknown = cfg.Attach != ""
	if cfg.Attach == "" && cfg.Username != "" {
		// The clients' user may not use CONFIG SET: the agent has its own.
		pass, err := agentPassword()
		if err != nil {
			return err
		}
		s.conf.agentPass = pass
		s.conf.admin = newProbe(a.addr, cfg.HealthTimeout, agentUser, pass)
	}
	defer s.conf.close()
	defer s.gates.Wait() // runs after rcancel, below
	rctx, rcancel := context.WithCancel(ctx)
	defer rcancel()

	if cfg.Attach == "" {
		dir := cfg.DataDir
		if dir == "" {
			d, err := os.MkdirTemp("", "pubmesh-node-")
			if err != nil {
				return fmt.Errorf("broker: data dir: %w", err)
			}
			defer os.RemoveAll(d)
			dir = d
		}
		s.dir = dir
	}

	defer func() {
		a.leave(s, leaveStop)
		if s.registered && s.reg == nil {
			// The node has left for good: the acks about it are of no use.
			octx, cancel := context.WithTimeout(context.Background(), opTimeout)
			if err := a.reg.ClearAcks(octx, cfg.ID); err != nil {
				a.log.Warn("cannot delete the acks about this node", "err", err)
			}
			cancel()
		}
		if s.child != nil {
			s.child.stop(cfg.StopTimeout)
			a.setPID(0)
			a.log.Info("redis-server stopped")
			// Its history is gone with it, unless a drain handed it off
			// (and ended the run already).
			a.endRun(context.Background(), s, time.Now(), false)
		}
		// An attached Redis keeps running, and its run with it.
		a.flushRunEnds(s)
	}()
	// The redis-server starts while etcd is reached, so a join is ready
	// sooner. It starts with the default settings (the configuration is
	// read after); the first health check applies the configuration
	// (CONFIG SET) before the node registers, so no client ever uses it
	// with other settings than the cluster's.
	etcdUp := make(chan error, 1) // nil once etcd answered; the agent stopped first otherwise
	s.gates.Add(1)
	go func() {
		defer s.gates.Done()
		etcdUp <- a.prepareEtcd(rctx)
	}()
	if cfg.Attach == "" {
		if err := a.startChild(rctx, s); err != nil {
			return err
		}
	} else {
		a.log.Info("watching attached redis", "addr", cfg.Attach)
	}
	if err := <-etcdUp; err != nil {
		if errors.Is(err, errStoppedEarly) {
			return nil
		}
		return err
	}
	a.logOverrides()
	a.openConfig(rctx, &s.conf)
	// Old runs are pruned once the node is on its way; nothing waits for it.
	s.gates.Add(1)
	go func() {
		defer s.gates.Done()
		a.pruneRuns(rctx, &s.conf)
	}()
	if err := a.checkHealth(rctx, s); err != nil {
		return err
	}

	tick := time.NewTicker(cfg.HealthInterval)
	defer tick.Stop()
	for {
		var err error
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-a.shutdown:
			a.mu.Lock()
			bound := a.shutdownCtx
			a.mu.Unlock()
			a.log.Info("shutting down: draining")
			return a.drain(rctx, s, bound)
		case <-s.drainReq:
			a.log.Info("drain requested")
			return a.drain(rctx, s, rctx)
		case <-s.childDone:
			a.childExited(s)
		case <-s.restartC:
			err = a.restartChild(rctx, s)
		case <-s.regDone:
			a.leaseLost(s)
		case gerr := <-s.gateDone:
			a.joinGateDone(rctx, s, gerr)
		case <-tick.C:
			err = a.checkHealth(rctx, s)
			if len(s.runs.pending) > 0 || (s.reg != nil && !s.runs.swept) {
				a.retryRunEnds(rctx, s)
			}
		case <-s.conf.changed:
			a.syncConfig(rctx, s)
		}
		if err != nil {
			return err
		}
	}
}

// errStoppedEarly is prepareEtcd's answer when Shutdown came before etcd.
var errStoppedEarly = errors.New("broker: stopped before etcd answered")

// prepareEtcd waits for etcd and clears a drain request left from an
// earlier agent with this id (it crashed before it could clear it): that
// request is for the earlier registration, and DrainRequested ignores it
// (see register), but it should not linger.
func (a *Agent) prepareEtcd(ctx context.Context) error {
	// A node may start before etcd (a cold start of a whole site): wait for
	// it rather than exit and crash-loop.
	ok, err := a.waitEtcd(ctx)
	if !ok {
		if err == nil {
			return errStoppedEarly
		}
		return err
	}
	cctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	if err := a.reg.ClearDrain(cctx, a.cfg.ID); err != nil {
		a.log.Warn("cannot clear an old drain request", "err", err)
	}
	return nil
}

// waitEtcd returns (true, nil) once etcd answers. Until then it retries with
// a backoff (250ms, doubling up to 5s) and logs what it waits for. It
// returns false when the agent stops first: with ctx's error, or nil after
// Shutdown (there is nothing to drain yet).
func (a *Agent) waitEtcd(ctx context.Context) (bool, error) {
	t0 := time.Now()
	wait := 250 * time.Millisecond
	for {
		octx, cancel := context.WithTimeout(ctx, opTimeout)
		err := a.reg.Ping(octx)
		cancel()
		if err == nil {
			if time.Since(t0) > opTimeout {
				a.log.Info("etcd answers", "after", time.Since(t0).Round(time.Millisecond))
			}
			return true, nil
		}
		if ctx.Err() != nil {
			return false, ctx.Err()
		}
		a.m.registerErrors.Inc()
		a.log.Warn("waiting for etcd", "endpoints", strings.Join(a.reg.Client().Endpoints(), ","), "err", err, "retry_in", wait)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return false, ctx.Err()
		case <-a.shutdown:
			t.Stop()
			a.log.Info("shut down while waiting for etcd")
			return false, nil
		case <-t.C:
		}
		wait = min(wait*2, 5*time.Second)
	}
}

// startChild starts the redis-server child and records it.
func (a *Agent) startChild(ctx context.Context, s *runState) error {
	conf, err := writeConf(s.dir, a.cfg, a.childStarting(&s.conf), s.conf.agentPass)
	if err != nil {
		return err
	}
	if a.cfg.tls() {
		// The probe accepts this certificate even if the file is replaced
		// while this child runs with it.
		leaf, err := leafDER(a.cfg.TLSCertFile)
		if err != nil {
			return fmt.Errorf("broker: TLS certificate: %w", err)
		}
		s.probe.setTLS(a.cfg.clientTLS(leaf))
		if s.conf.admin != s.probe {
			s.conf.admin.setTLS(a.cfg.clientTLS(leaf))
		}
	}
	p, _, err := startProcess(ctx, a.cfg, conf, s.probe, a.log)
	if err != nil {
		return err
	}
	s.child, s.childDone, s.started = p, p.done, p.started
	s.health = health{limit: a.cfg.HealthFailures}
	s.evict = evictions{known: true} // a new redis-server has evicted nothing
	a.setPID(p.pid)
	a.log.Info("redis-server started", "pid", p.pid, "addr", a.addr)
	return nil
}

// childExited handles the child's exit: the node leaves at once, and a
// restart is scheduled after the backoff.
func (a *Agent) childExited(s *runState) {
	p := s.child
	s.child, s.childDone = nil, nil
	a.setPID(0)
	a.m.redisUp.Set(0)
	a.leave(s, leaveExit)
	// Its history is gone: the run ends, not handed off.
	a.endRun(context.Background(), s, time.Now(), false)
	if time.Since(p.started) >= restartResetAfter {
		s.backoff = a.cfg.RestartBackoff
	}
	a.log.Warn("redis-server exited; restarting it", "pid", p.pid, "status", p.exitStatus(), "last_output", p.out.last(), "in", s.backoff)
	s.restartC = time.After(s.backoff)
	s.backoff = min(s.backoff*2, a.cfg.RestartBackoffMax)
}

// restartChild starts the child again; if that fails it tries again after
// the backoff. Once the child answers, the node registers as joining.
func (a *Agent) restartChild(ctx context.Context, s *runState) error {
	s.restartC = nil
	a.m.restarts.Inc()
	if err := a.startChild(ctx, s); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		a.log.Warn("cannot restart redis-server; trying again", "err", err, "in", s.backoff)
		s.restartC = time.After(s.backoff)
		s.backoff = min(s.backoff*2, a.cfg.RestartBackoffMax)
		return nil
	}
	return a.checkHealth(ctx, s)
}

func (a *Agent) setNode(n discovery.Node) {
	a.mu.Lock()
	a.node, a.state = n, n.State
	a.mu.Unlock()
	a.m.setState(string(n.State))
}

func (a *Agent) setGone() {
	a.mu.Lock()
	a.state = ""
	a.mu.Unlock()
	a.m.setState(StateGone)
}

func (a *Agent) setPID(pid int) {
	a.mu.Lock()
	a.pid = pid
	a.mu.Unlock()
}
