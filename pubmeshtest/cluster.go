package pubmeshtest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/pubmesh/pubmesh/broker"
	"github.com/pubmesh/pubmesh/discovery"
	"github.com/pubmesh/pubmesh/fanout"
	"github.com/pubmesh/pubmesh/internal/embedetcd"
	"github.com/pubmesh/pubmesh/internal/freeport"
)

// Options of a test cluster. The zero value is a one-node cluster.
type Options struct {
	// Nodes is how many nodes start ready. 0 means 1; -1 means none (an
	// etcd alone, for tests of the registry or of agents of their own).
	Nodes int
	// Cluster names the cluster in etcd. Default: "test-<n>", unique in
	// the process.
	Cluster string
	// Logger receives the agents' logs. Default: discarded.
	Logger *slog.Logger
	// ReadyTimeout bounds Start's wait for the nodes to turn ready, and
	// AddNode's. Default: 30s.
	ReadyTimeout time.Duration
}

// Cluster is a running test cluster.
type Cluster struct {
	name string
	log  *slog.Logger
	opts Options
	etcd *embedetcd.Server
	cli  *clientv3.Client
	reg  *discovery.Registry

	nodeSeq atomic.Int64 // numbers node ids

	mu     sync.Mutex // guards agents, closed
	agents []*node
	closed bool
}

// node is one agent and the goroutine that runs it.
type node struct {
	agent *broker.Agent
	done  chan error // Run's result
}

var clusterSeq atomic.Int64

// New starts a cluster for t and stops it when t ends; it fails t if the
// cluster does not start.
func New(t testing.TB, opts Options) *Cluster {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*defaultDuration(opts.ReadyTimeout, 30*time.Second))
	defer cancel()
	c, err := Start(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

// Start starts a cluster and returns once its nodes are ready. The caller
// must Close it.
func Start(ctx context.Context, opts Options) (*Cluster, error) {
	opts.ReadyTimeout = defaultDuration(opts.ReadyTimeout, 30*time.Second)
	if opts.Nodes == 0 {
		opts.Nodes = 1
	}
	if opts.Cluster == "" {
		opts.Cluster = fmt.Sprintf("test-%d", clusterSeq.Add(1))
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	etcd, err := embedetcd.Start(embedetcd.Config{})
	if err != nil {
		return nil, fmt.Errorf("pubmeshtest: %w", err)
	}
	c := &Cluster{name: opts.Cluster, log: opts.Logger, opts: opts, etcd: etcd}
	if c.cli, err = discovery.Dial(ctx, c.Etcd()); err != nil {
		etcd.Close()
		return nil, fmt.Errorf("pubmeshtest: %w", err)
	}
	if c.reg, err = discovery.New(c.cli, discovery.Config{Cluster: c.name, Logger: c.log}); err != nil {
		c.Close()
		return nil, fmt.Errorf("pubmeshtest: %w", err)
	}
	for range max(opts.Nodes, 0) {
		if _, err := c.AddNode(ctx); err != nil {
			c.Close()
			return nil, err
		}
	}
	return c, nil
}

func defaultDuration(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}

// Name is the cluster's name in etcd (fanout.Config.Cluster).
func (c *Cluster) Name() string { return c.name }

// Etcd says how to reach the cluster's etcd.
func (c *Cluster) Etcd() discovery.EtcdConfig {
	return discovery.EtcdConfig{Endpoints: []string{c.etcd.Endpoint()}}
}

// Registry is the cluster's node registry, on a connection of the
// Cluster's own.
func (c *Cluster) Registry() *discovery.Registry { return c.reg }

// FanoutConfig is a fanout.Config that joins the cluster; set other fields
// on it as a service would.
func (c *Cluster) FanoutConfig() fanout.Config {
	return fanout.Config{Etcd: c.Etcd(), Cluster: c.name}
}

// Nodes are the agents that run the cluster's nodes, in start order
// (including ones that have left).
func (c *Cluster) Nodes() []*broker.Agent {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]*broker.Agent, len(c.agents))
	for i, n := range c.agents {
		out[i] = n.agent
	}
	return out
}

// AddNode starts another node (an agent and its redis-server) and returns
// once it is ready: every fanout client of the cluster has subscribed
// there, as in production.
func (c *Cluster) AddNode(ctx context.Context) (*broker.Agent, error) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil, errors.New("pubmeshtest: cluster closed")
	}
	c.mu.Unlock()
	id := fmt.Sprintf("node%d", c.nodeSeq.Add(1))
	var agent *broker.Agent
	// A port another program took meanwhile is not the caller's problem:
	// take another.
	err := freeport.Use(func(port int) (err error) {
		agent, err = broker.New(broker.Config{
			Registry:     c.reg,
			ID:           id,
			Port:         port,
			JoinTimeout:  5 * time.Second,
			DrainTimeout: 5 * time.Second,
			Logger:       c.log.With("node", id),
		})
		return err
	}, func(err error) bool { return errors.Is(err, broker.ErrPortInUse) })
	if err != nil {
		return nil, fmt.Errorf("pubmeshtest: node %s: %w", id, err)
	}
	n := &node{agent: agent, done: make(chan error, 1)}
	go func() { n.done <- agent.Run(context.Background()) }()
	c.mu.Lock()
	c.agents = append(c.agents, n)
	c.mu.Unlock()
	t := time.NewTimer(c.opts.ReadyTimeout)
	defer t.Stop()
	select {
	case <-agent.Ready():
		return agent, nil
	case err := <-n.done:
		n.done <- err // for Close
		return nil, fmt.Errorf("pubmeshtest: node %s stopped before it was ready: %w", id, err)
	case <-t.C:
		return nil, fmt.Errorf("pubmeshtest: node %s not ready after %s", id, c.opts.ReadyTimeout)
	case <-ctx.Done():
		return nil, fmt.Errorf("pubmeshtest: node %s: %w", id, ctx.Err())
	}
}

// Close drains and stops every node, then etcd. It is safe to call more
// than once.
func (c *Cluster) Close() {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.closed = true
	agents := c.agents
	c.mu.Unlock()
	var wg sync.WaitGroup
	for _, n := range agents {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			n.agent.Shutdown(ctx)
			<-n.done
		}()
	}
	wg.Wait()
	if c.cli != nil {
		c.cli.Close()
	}
	c.etcd.Close()
}

// FreePort returns a loopback port nothing listens on, for a node or
// gateway a test starts itself.
func FreePort() (int, error) { return freeport.Get() }
