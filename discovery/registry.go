package discovery

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// ErrNodeExists is returned by Register when a live node already holds the id.
var ErrNodeExists = errors.New("discovery: a live node already has this id")

// Config of a Registry.
type Config struct {
	// Cluster names the pub/sub tier; clusters share etcd but nothing else.
	// Default: "default".
	Cluster string
	// Prefix is the root of every key. Default: "/pubmesh".
	Prefix string
	// Logger. Default: slog.Default().
	Logger *slog.Logger
}

// Registry reads and writes one cluster's keys. It is safe for concurrent
// use and holds no state but its configuration; it does not own the etcd
// client.
type Registry struct {
	cli  *clientv3.Client
	cfg  Config
	keys keys
}

// New returns a Registry for cfg.Cluster on cli.
func New(cli *clientv3.Client, cfg Config) (*Registry, error) {
	if cfg.Cluster == "" {
		cfg.Cluster = "default"
	}
	if cfg.Prefix == "" {
		cfg.Prefix = DefaultPrefix
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if err := ValidID(cfg.Cluster); err != nil {
		return nil, fmt.Errorf("discovery: cluster: %w", err)
	}
	return &Registry{cli: cli, cfg: cfg, keys: newKeys(cfg.Prefix, cfg.Cluster)}, nil
}

// Client is the etcd client the registry uses.
func (r *Registry) Client() *clientv3.Client { return r.cli }

// Cluster is the cluster name.
func (r *Registry) Cluster() string { return r.cfg.Cluster }

// NodeKey is the etcd key of node id.
func (r *Registry) NodeKey(id string) string { return r.keys.node(id) }

// List returns the live nodes sorted by id, the revision they were read at,
// and skips (and logs) values that do not decode.
func (r *Registry) List(ctx context.Context) ([]Node, int64, error) {
	resp, err := r.cli.Get(ctx, r.keys.nodes(), clientv3.WithPrefix())
	if err != nil {
		return nil, 0, fmt.Errorf("discovery: list nodes: %w", err)
	}
	m := make(map[string]Node, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		r.applyPut(m, string(kv.Key), kv.Value)
	}
	return sortedNodes(m), resp.Header.Revision, nil
}

// RegisterOptions tune a registration.
type RegisterOptions struct {
	// TTL of the lease. A crashed agent's node disappears this long after
	// its last keep-alive. Default: 5s.
	TTL time.Duration
}

// Register writes node under a new lease and keeps the lease alive until
// Close or until the lease is lost (see Registration.Done). It fails with
// ErrNodeExists if a live node already has the id.
func (r *Registry) Register(ctx context.Context, node Node, opts RegisterOptions) (*Registration, error) {
	if opts.TTL == 0 {
		opts.TTL = 5 * time.Second
	}
	if err := node.Validate(); err != nil {
		return nil, err
	}
	secs := int64(opts.TTL / time.Second)
	if secs < 1 {
		secs = 1
	}
	lease, err := r.cli.Grant(ctx, secs)
	if err != nil {
		return nil, fmt.Errorf("discovery: register %s: grant lease: %w", node.ID, err)
	}
	key := r.keys.node(node.ID)
	val, _ := json.Marshal(node)
	txn, err := r.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, string(val), clientv3.WithLease(lease.ID))).
		Commit()
	if err == nil && !txn.Succeeded {
		err = ErrNodeExists
	}
	if err != nil {
		rctx, cancel := context.WithTimeout(context.Background(), time.Second)
		r.cli.Revoke(rctx, lease.ID)
		cancel()
		return nil, fmt.Errorf("discovery: register %s: %w", node.ID, err)
	}
	kctx, kcancel := context.WithCancel(context.Background())
	ka, err := r.cli.KeepAlive(kctx, lease.ID)
	if err != nil {
		kcancel()
		return nil, fmt.Errorf("discovery: register %s: keep alive: %w", node.ID, err)
	}
	reg := &Registration{r: r, key: key, lease: lease.ID, ttl: opts.TTL, node: node, cancel: kcancel, done: make(chan struct{})}
	go reg.keepAlive(ka)
	return reg, nil
}

// Registration is one node's key under its lease. It is safe for concurrent
// use. Like concurrency.Session: Done fires when the lease is lost, and Close
// revokes it.
type Registration struct {
	r      *Registry
	key    string
	lease  clientv3.LeaseID
	ttl    time.Duration
	cancel context.CancelFunc // stops the keep-alive

	mu   sync.Mutex // guards node, err
	node Node
	err  error

	done      chan struct{} // closed by keepAlive when the lease is lost or closed
	closeOnce sync.Once
}

func (g *Registration) keepAlive(ka <-chan *clientv3.LeaseKeepAliveResponse) {
	defer close(g.done)
	for range ka {
	}
	g.mu.Lock()
	if g.err == nil {
		g.err = fmt.Errorf("discovery: node %s: lease lost", g.node.ID)
	}
	g.mu.Unlock()
}

// Done is closed when the lease is lost (not renewed within its TTL, for
// example while etcd was unreachable) or after Close. The key is then gone
// or about to go; register again to come back.
func (g *Registration) Done() <-chan struct{} { return g.done }

// Err says why Done closed.
func (g *Registration) Err() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.err
}

// Node is the value as last written.
func (g *Registration) Node() Node {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.node
}

// Lease is the registration's lease id.
func (g *Registration) Lease() clientv3.LeaseID { return g.lease }

// SetState writes a new state. It fails if the lease is gone.
func (g *Registration) SetState(ctx context.Context, s State) error {
	return g.Update(ctx, func(n *Node) { n.State = s })
}

// Update changes the value with fn and writes it under the same lease, only
// if the key still belongs to this lease.
func (g *Registration) Update(ctx context.Context, fn func(*Node)) error {
	g.mu.Lock()
	n := g.node
	fn(&n)
	g.mu.Unlock()
	if err := n.Validate(); err != nil {
		return err
	}
	val, _ := json.Marshal(n)
	txn, err := g.r.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.LeaseValue(g.key), "=", g.lease)).
		Then(clientv3.OpPut(g.key, string(val), clientv3.WithLease(g.lease))).
		Commit()
	if err != nil {
		return fmt.Errorf("discovery: update %s: %w", n.ID, err)
	}
	if !txn.Succeeded {
		return fmt.Errorf("discovery: update %s: lease lost", n.ID)
	}
	g.mu.Lock()
	g.node = n
	g.mu.Unlock()
	return nil
}

// Close revokes the lease, which deletes the key at once. If etcd does not
// answer within the TTL, the lease expires by itself anyway. Safe to call
// more than once.
func (g *Registration) Close(ctx context.Context) error {
	var err error
	g.closeOnce.Do(func() {
		g.mu.Lock()
		if g.err == nil {
			g.err = fmt.Errorf("discovery: node %s: closed", g.node.ID)
		}
		g.mu.Unlock()
		g.cancel()
		rctx, cancel := context.WithTimeout(ctx, g.ttl)
		defer cancel()
		if _, rerr := g.r.cli.Revoke(rctx, g.lease); rerr != nil {
			err = fmt.Errorf("discovery: deregister %s: %w", g.node.ID, rerr)
		}
	})
	return err
}
