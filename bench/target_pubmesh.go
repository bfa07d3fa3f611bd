package bench

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/pubmesh/pubmesh/discovery"
	"github.com/pubmesh/pubmesh/fanout"
	"github.com/pubmesh/pubmesh/internal/embedetcd"
	"github.com/pubmesh/pubmesh/internal/testredis"
	"github.com/pubmesh/pubmesh/internal/version"
)

// etcdEnv is the embedded etcd of a run, started on first use and shared
// by every pubmesh target (each has its own cluster name). Safe for
// concurrent use.
type etcdEnv struct {
	mu  sync.Mutex // guards all fields
	srv *embedetcd.Server
	cli *clientv3.Client
	seq int
}

// cluster returns the etcd client and a fresh cluster name.
func (e *etcdEnv) cluster(ctx context.Context) (*clientv3.Client, string, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.cli == nil {
		srv, err := embedetcd.Start(embedetcd.Config{})
		if err != nil {
			return nil, "", fmt.Errorf("bench: embedded etcd: %w", err)
		}
		cli, err := discovery.Dial(ctx, discovery.EtcdConfig{Endpoints: []string{srv.Endpoint()}})
		if err != nil {
			srv.Close()
			return nil, "", fmt.Errorf("bench: %w", err)
		}
		e.srv, e.cli = srv, cli
	}
	e.seq++
	return e.cli, "bench-" + strconv.Itoa(e.seq), nil
}

// endpoint is the embedded etcd's client URL; cluster must have started
// it.
func (e *etcdEnv) endpoint() string {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.srv == nil {
		return ""
	}
	return e.srv.Endpoint()
}

func (e *etcdEnv) close() {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.cli != nil {
		e.cli.Close()
		e.srv.Close()
		e.cli, e.srv = nil, nil
	}
}

// pubmeshTarget is the fanout client over independent redis-servers
// registered ready in etcd (rows 5 and 6, the scaling and latency tables):
// one fanout.Client publishes, one Publish call per message from many
// goroutines, and each subscriber is its own fanout.Client.
//
// Subscribers use Overflow: Block, like a plain go-redis reader: a slow
// reader holds Redis back (up to the output buffer limit) instead of
// dropping; drops are counted anyway.
type pubmeshTarget struct {
	srv      *servers
	nodes    []*testredis.Server
	regs     []*discovery.Registration
	cli      *clientv3.Client
	cluster  string
	replicas int
	pub      *fanout.Client
	workers  int
	log      *slog.Logger
	// async publishes with PublishAsync from one goroutine (row 9), with
	// up to asyncDepth messages not yet answered.
	async   bool
	pending []*fanout.PublishResult // async only: oldest first

	mu            sync.Mutex // guards subs, subscriptions
	subs          []*fanout.Client
	subscriptions []*fanout.Subscription
}

// newPubmeshTarget starts the target; config, if not empty, is written as
// the cluster configuration before any client starts (row 8: history).
func newPubmeshTarget(ctx context.Context, srv *servers, ee *etcdEnv, cfg Config, nodes, replicas int, config string) (*pubmeshTarget, error) {
	cli, cluster, err := ee.cluster(ctx)
	if err != nil {
		return nil, err
	}
	t := &pubmeshTarget{srv: srv, cli: cli, cluster: cluster, replicas: replicas, workers: cfg.Publishers,
		log: slog.New(slog.NewTextHandler(cfg.Progress, &slog.HandlerOptions{Level: slog.LevelWarn}))}
	reg, err := discovery.New(cli, discovery.Config{Cluster: cluster, Logger: t.log})
	if err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	if config != "" {
		if _, err := reg.ApplyConfig(ctx, []byte(config), discovery.ConfigChange{Author: "bench"}); err != nil {
			return nil, fmt.Errorf("bench: cluster configuration: %w", err)
		}
	}
	for i := range nodes {
		rs, err := srv.start()
		if err != nil {
			t.close()
			return nil, err
		}
		t.nodes = append(t.nodes, rs)
		g, err := reg.Register(ctx, discovery.Node{
			ID: fmt.Sprintf("n%d", i+1), Addr: rs.Addr, State: discovery.StateReady,
			StartedAt: time.Now().UTC(), Version: version.Version, RunID: strconv.Itoa(rs.PID()),
		}, discovery.RegisterOptions{})
		if err != nil {
			t.close()
			return nil, fmt.Errorf("bench: register node: %w", err)
		}
		t.regs = append(t.regs, g)
	}
	if t.pub, err = t.client(ctx); err != nil {
		t.close()
		return nil, err
	}
	return t, nil
}

func (t *pubmeshTarget) client(ctx context.Context) (*fanout.Client, error) {
	c, err := fanout.New(ctx, fanout.Config{
		EtcdClient: t.cli, Cluster: t.cluster, Replicas: t.replicas, Overflow: fanout.Block, Logger: t.log,
	})
	if err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	if n := len(c.Nodes().Ready()); n != len(t.nodes) {
		c.Close()
		return nil, fmt.Errorf("bench: fanout client sees %d ready nodes, want %d", n, len(t.nodes))
	}
	return c, nil
}

func (t *pubmeshTarget) redisAddrs() []string {
	out := make([]string, len(t.nodes))
	for i, n := range t.nodes {
		out[i] = n.Addr
	}
	return out
}

// asyncDepth is how many PublishAsync calls row 9 lets wait for their
// answer: the pipelines of row 1 (4 x 128) twice over.
const asyncDepth = 1024

func (t *pubmeshTarget) shape() (int, int) {
	if t.async {
		return 1, 128
	}
	return t.workers, 1
}

func (t *pubmeshTarget) subscribe(ctx context.Context, channels []string, sk *sink) (func(), error) {
	c, err := t.client(ctx)
	if err != nil {
		return nil, err
	}
	t.mu.Lock()
	t.subs = append(t.subs, c)
	t.mu.Unlock()
	sub, err := c.Subscribe(ctx, channels...)
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("bench: %w", err)
	}
	t.mu.Lock()
	t.subscriptions = append(t.subscriptions, sub)
	t.mu.Unlock()
	rec := sk.recorder()
	done := make(chan struct{})
	go func() {
		defer close(done)
		for m := range sub.Messages() {
			if ts, ok := stampOf(m.Payload); ok {
				rec.record(ts)
			}
		}
	}()
	var once sync.Once
	return func() {
		once.Do(func() {
			c.Close() // closes sub.Messages()
			<-done
		})
	}, nil
}

// dropped sums the subscription buffer drops of every subscriber (zero
// with Overflow: Block unless something is wrong).
func (t *pubmeshTarget) dropped() uint64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	var n uint64
	for _, s := range t.subscriptions {
		n += s.Dropped()
	}
	return n
}

func (t *pubmeshTarget) publish(ctx context.Context, msgs []message) (int, error) {
	if t.async {
		for _, m := range msgs {
			t.pending = append(t.pending, t.pub.PublishAsync(ctx, m.channel, m.payload))
		}
		for len(t.pending) > asyncDepth {
			if err := t.pending[0].Err(); err != nil {
				return 0, err
			}
			t.pending = t.pending[1:]
		}
		return len(msgs), nil
	}
	for i, m := range msgs {
		if err := t.pub.Publish(ctx, m.channel, m.payload); err != nil {
			return i, err
		}
	}
	return len(msgs), nil
}

func (t *pubmeshTarget) close() {
	t.mu.Lock()
	subs := t.subs
	t.subs = nil
	t.mu.Unlock()
	for _, c := range subs {
		c.Close()
	}
	if t.pub != nil {
		t.pub.Close()
	}
	for _, g := range t.regs {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		g.Close(ctx)
		cancel()
	}
	for _, n := range t.nodes {
		t.srv.stop(n)
	}
}
