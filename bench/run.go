package bench

import (
	"context"
	"fmt"
	"time"
)

// rowSpec is one row of the main table.
type rowSpec struct {
	row   int
	key   string
	label string
	// open starts the target's servers and clients.
	open func(ctx context.Context, e *env) (target, error)
	// nodes and replicas describe it in the report.
	nodes, replicas int
}

// better reports whether measurement a beats b for the main table: no
// error, then no loss, then more delivered/s.
func better(a, b Result) bool {
	if (a.Err == "") != (b.Err == "") {
		return a.Err == ""
	}
	if (a.Lost == 0) != (b.Lost == 0) {
		return a.Lost == 0
	}
	return a.DeliveredPerSec > b.DeliveredPerSec
}

// env is what the targets of one run share.
type env struct {
	cfg  Config
	srv  *servers
	etcd *etcdEnv
}

// historyDoc is row 8's cluster configuration: history on for every
// channel, as many messages kept as a busy channel needs.
const historyDoc = `namespaces: [{match: "**", history_size: 1000, history_ttl: 10m}]`

func rowSpecs(cfg Config) []rowSpec {
	n := cfg.Nodes
	masters := max(n, 3) // redis-cli --cluster create wants 3 masters at least
	return []rowSpec{
		{row: 1, key: "redis-pipelined", label: "go-redis, 1 node, hand-pipelined", nodes: 1,
			open: func(ctx context.Context, e *env) (target, error) { return newRedisTarget(e.srv, e.cfg, true) }},
		{row: 2, key: "redis-per-call", label: "go-redis, 1 node, 1 PUBLISH per call", nodes: 1,
			open: func(ctx context.Context, e *env) (target, error) { return newRedisTarget(e.srv, e.cfg, false) }},
		{row: 3, key: "cluster-publish", label: fmt.Sprintf("Redis Cluster, %d masters, PUBLISH", masters), nodes: masters,
			open: func(ctx context.Context, e *env) (target, error) {
				return newClusterTarget(ctx, e.srv, e.cfg, masters, false)
			}},
		{row: 4, key: "cluster-spublish", label: fmt.Sprintf("Redis Cluster, %d masters, SPUBLISH", masters), nodes: masters,
			open: func(ctx context.Context, e *env) (target, error) {
				return newClusterTarget(ctx, e.srv, e.cfg, masters, true)
			}},
		{row: 5, key: "pubmesh", label: fmt.Sprintf("pubmesh, %d nodes, 1 Publish per call", n), nodes: n, replicas: 1,
			open: func(ctx context.Context, e *env) (target, error) {
				return newPubmeshTarget(ctx, e.srv, e.etcd, e.cfg, n, 1, "")
			}},
		{row: 6, key: "pubmesh-replicas-2", label: fmt.Sprintf("pubmesh, %d nodes, Replicas: 2", n), nodes: n, replicas: 2,
			open: func(ctx context.Context, e *env) (target, error) {
				return newPubmeshTarget(ctx, e.srv, e.etcd, e.cfg, n, 2, "")
			}},
		{row: 7, key: "gateway", label: fmt.Sprintf("pubmesh, %d nodes, via WebSocket gateway", n), nodes: n, replicas: 1,
			open: func(ctx context.Context, e *env) (target, error) {
				return newGatewayTarget(ctx, e.srv, e.etcd, e.cfg, n, false)
			}},
		{row: 11, key: "gateway-compression", label: fmt.Sprintf("pubmesh, %d nodes, via WebSocket gateway, compression on", n), nodes: n, replicas: 1,
			open: func(ctx context.Context, e *env) (target, error) {
				return newGatewayTarget(ctx, e.srv, e.etcd, e.cfg, n, true)
			}},
		{row: 8, key: "pubmesh-history", label: fmt.Sprintf("pubmesh, %d nodes, history on (every channel)", n), nodes: n, replicas: 1,
			open: func(ctx context.Context, e *env) (target, error) {
				return newPubmeshTarget(ctx, e.srv, e.etcd, e.cfg, n, 1, historyDoc)
			}},
		{row: 9, key: "pubmesh-async", label: fmt.Sprintf("pubmesh, %d nodes, PublishAsync from 1 goroutine", n), nodes: n, replicas: 1,
			open: func(ctx context.Context, e *env) (target, error) {
				t, err := newPubmeshTarget(ctx, e.srv, e.etcd, e.cfg, n, 1, "")
				if t != nil {
					t.async = true
				}
				return t, err
			}},
		{row: 10, key: "pubmesh-4", label: fmt.Sprintf("pubmesh, %d nodes, Publish from 4 goroutines", n), nodes: n, replicas: 1,
			open: func(ctx context.Context, e *env) (target, error) {
				t, err := newPubmeshTarget(ctx, e.srv, e.etcd, e.cfg, n, 1, "")
				if t != nil {
					t.workers = 4
				}
				return t, err
			}},
	}
}

// Run starts the servers, measures every selected row, the scaling and
// the latency tables, stops every server it started and returns the
// report. A measurement that fails is reported in its row (Result.Err) and
// the run goes on; Run returns an error only for a bad Config or a
// canceled ctx. If cfg.OutDir is set the report files are written there.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	rep := &Report{Started: time.Now(), Machine: thisMachine(), Config: workloadOf(cfg)}
	rep.LoadAvg[0] = loadAvg()
	e := &env{cfg: cfg, srv: newServers(cfg.PubsubBufferLimit), etcd: &etcdEnv{}}
	defer func() {
		e.etcd.close()
		e.srv.stopAll()
	}()
	r := newRunner(cfg)

	measure := func(label string, open func() (target, error), rate float64, base Result) Result {
		res := base
		if ctx.Err() != nil {
			res.Err = ctx.Err().Error()
			return res
		}
		t, err := open()
		if err != nil {
			res.Err = err.Error()
			fmt.Fprintf(cfg.Progress, "bench: %s: %v\n", label, err)
			return res
		}
		m, err := r.measure(ctx, label, t, rate)
		t.close()
		m.Row, m.Key, m.Label, m.Nodes, m.Replicas = base.Row, base.Key, base.Label, base.Nodes, base.Replicas
		m.LoadFraction, m.Reference, m.History = base.LoadFraction, base.Reference, base.History
		if err != nil {
			m.Err = err.Error()
			fmt.Fprintf(cfg.Progress, "bench: %s: %v\n", label, err)
			return m
		}
		fmt.Fprintf(cfg.Progress, "bench: %-34s done: published %s/s, delivered %s/s, lost %d, p99 %s\n",
			label, si(m.PublishedPerSec), si(m.DeliveredPerSec), m.Lost, ms(m.P99us))
		return m
	}

	// Main table: every selected row Repeat times, round-robin, so that a
	// burst of load from elsewhere on the machine hits different rows;
	// each row keeps its attempt with the highest delivered/s among those
	// that lost nothing (any attempt if all lost some).
	var specs []rowSpec
	for _, s := range rowSpecs(cfg) {
		if cfg.wantRow(s.row) {
			specs = append(specs, s)
		}
	}
	rep.Rows = make([]Result, len(specs))
	for a := range cfg.Repeat {
		for i, s := range specs {
			label := fmt.Sprintf("[%d] %s", s.row, s.key)
			if cfg.Repeat > 1 {
				label = fmt.Sprintf("[%d #%d] %s", s.row, a+1, s.key)
			}
			res := measure(label, func() (target, error) { return s.open(ctx, e) }, cfg.Rate,
				Result{Row: s.row, Key: s.key, Label: s.label, Nodes: s.nodes, Replicas: s.replicas})
			attempts := append(rep.Rows[i].Attempts, attemptOf(res))
			if a == 0 || better(res, rep.Rows[i]) {
				rep.Rows[i] = res
			}
			rep.Rows[i].Attempts = attempts
		}
	}

	rep.Fanout = runFanout(ctx, e)

	pubmesh := func(nodes int) func() (target, error) {
		return func() (target, error) { return newPubmeshTarget(ctx, e.srv, e.etcd, cfg, nodes, 1, "") }
	}
	if !cfg.SkipScaling {
		for _, n := range cfg.NodeCounts {
			key := fmt.Sprintf("pubmesh-%d", n)
			rep.Scaling = append(rep.Scaling, measure("[nodes] "+key, pubmesh(n), 0,
				Result{Key: key, Label: fmt.Sprintf("pubmesh, %d nodes", n), Nodes: n, Replicas: 1}))
		}
	}
	if !cfg.SkipLatency {
		max, ok := rep.row(5)
		if !ok || cfg.Rate > 0 {
			// The main table did not measure pubmesh's max: do it here.
			max = measure("[latency] pubmesh max", pubmesh(cfg.Nodes), 0,
				Result{Key: "pubmesh-max", Label: fmt.Sprintf("pubmesh, %d nodes, max", cfg.Nodes), Nodes: cfg.Nodes, Replicas: 1})
			max.LoadFraction = 1
			rep.Latency = append(rep.Latency, max)
		}
		for _, f := range cfg.LoadFractions {
			key := fmt.Sprintf("pubmesh-at-%.0f%%", f*100)
			base := Result{Key: key, Label: fmt.Sprintf("pubmesh, %d nodes, %.0f%% of max", cfg.Nodes, f*100),
				Nodes: cfg.Nodes, Replicas: 1, LoadFraction: f}
			if max.Err != "" || max.PublishedPerSec == 0 {
				base.Err = "no max rate measured"
				rep.Latency = append(rep.Latency, base)
				continue
			}
			rate := f * max.PublishedPerSec
			rep.Latency = append(rep.Latency, measure("[latency] "+key, pubmesh(cfg.Nodes), rate, base))
			// The same rate with history on, where row 8 sustains it: at a
			// load both carry, the two runs differ in history alone (their
			// max rates differ, and so does how much a pipeline batches).
			if h, ok := rep.row(8); ok && rate < 0.9*h.PublishedPerSec {
				hkey := fmt.Sprintf("pubmesh-history-at-%.0f%%", f*100)
				rep.Latency = append(rep.Latency, measure("[latency] "+hkey, func() (target, error) {
					return newPubmeshTarget(ctx, e.srv, e.etcd, cfg, cfg.Nodes, 1, historyDoc)
				}, rate, Result{Key: hkey, Label: fmt.Sprintf("pubmesh, %d nodes, history on, %.0f%% of max", cfg.Nodes, f*100),
					Nodes: cfg.Nodes, Replicas: 1, LoadFraction: f, History: true}))
			}
			// The same offered rate on plain go-redis (row 2's shape): what
			// the machine itself adds to the latency.
			ref := fmt.Sprintf("redis-per-call-at-%.0f%%", f*100)
			rep.Latency = append(rep.Latency, measure("[latency] "+ref,
				func() (target, error) { return newRedisTarget(e.srv, cfg, false) }, rate,
				Result{Key: ref, Label: "go-redis, 1 node, 1 PUBLISH per call (reference)", Nodes: 1, LoadFraction: f, Reference: true}))
		}
	}
	rep.computeRatios()

	e.etcd.close()
	e.srv.stopAll()
	rep.ServersStarted, rep.ServersLeft = e.srv.started(), e.srv.leftover()
	rep.Finished = time.Now()
	rep.LoadAvg[1] = loadAvg()
	if err := ctx.Err(); err != nil {
		return rep, fmt.Errorf("bench: %w", err)
	}
	if cfg.OutDir != "" {
		if err := rep.WriteFiles(cfg.OutDir); err != nil {
			return rep, err
		}
	}
	return rep, nil
}
