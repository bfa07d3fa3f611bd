package discovery

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// ErrNodeExists is returned by Register when a live node already holds the id.
var ErrNodeExists = errors.New("discovery: a live node already has this id")

// ForeignValueError is how Register fails when the node's key holds a
// value that is not a node registration: something other than a node
// agent wrote it, and it may never go away by itself. It matches
// ErrNodeExists with errors.Is.
type ForeignValueError struct {
	Key string
	Err error // why the value is not a node registration
}

func (e *ForeignValueError) Error() string {
	return fmt.Sprintf("discovery: %s holds a value that is not a node registration (%v): delete it", e.Key, e.Err)
}

// Is makes errors.Is(err, ErrNodeExists) true.
func (e *ForeignValueError) Is(target error) bool { return target == ErrNodeExists }

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
// use and holds no state but its configuration and a counter of bad
// values; it does not own the etcd client.
type Registry struct {
	cli  *clientv3.Client
	cfg  Config
	keys keys
	bad  atomic.Uint64 // node values that did not decode, see BadValues
}

// BadValues is how many node values this Registry ignored (and logged)
// because they did not decode or validate (List and Watch skip them). The
// fanout client exports it as pubmesh_fanout_bad_node_values_total.
func (r *Registry) BadValues() uint64 { return r.bad.Load() }

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

// Ping reads the cluster's keys (a count only), to check that etcd answers
// and lets this client read them.
func (r *Registry) Ping(ctx context.Context) error {
	if _, err := r.cli.Get(ctx, r.keys.root, clientv3.WithPrefix(), clientv3.WithCountOnly()); err != nil {
		return fmt.Errorf("discovery: etcd %s: %w", strings.Join(r.cli.Endpoints(), ","), err)
	}
	return nil
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
		r.applyPut(m, kv)
	}
	return sortedNodes(m), resp.Header.Revision, nil
}

// RegisterOptions tune a registration.
type RegisterOptions struct {
	// TTL of the lease. A crashed agent's node disappears this long after
	// its last keep-alive. Default: 5s.
	TTL time.Duration
	// Prepare, when set, runs while the lease is being granted, and the
	// node is written only once it returned nil; its error fails Register.
	// An agent records the node's history run there, which must be in
	// etcd before any client sees the node, without adding its round trip
	// to the join. Default: none.
	Prepare func(ctx context.Context) error
}

// Register writes node under a new lease and keeps the lease alive until
// Close or until the lease is lost (see Registration.Done). It fails with
// ErrNodeExists if a live node already has the id, and with a
// *ForeignValueError (which is also ErrNodeExists) if the key holds
// something that is not a node registration.
func (r *Registry) Register(ctx context.Context, node Node, opts RegisterOptions) (*Registration, error) {
	if err := node.Validate(); err != nil {
		return nil, err
	}
	type granted struct {
		lease *Lease
		err   error
	}
	grant := make(chan granted, 1)
	go func() {
		l, err := grantLease(ctx, r.cli, opts.TTL, r.cfg.Logger)
		grant <- granted{l, err}
	}()
	var perr error
	if opts.Prepare != nil {
		perr = opts.Prepare(ctx)
	}
	g := <-grant
	lease, err := g.lease, g.err
	if err == nil && perr != nil {
		lease.Close(ctx)
		err = perr
	}
	if err != nil {
		return nil, fmt.Errorf("discovery: register %s: %w", node.ID, err)
	}
	key := r.keys.node(node.ID)
	val, _ := json.Marshal(node)
	txn, err := r.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, string(val), clientv3.WithLease(lease.ID()))).
		Else(clientv3.OpGet(key)).
		Commit()
	if err == nil && !txn.Succeeded {
		err = ErrNodeExists
		if kvs := txn.Responses[0].GetResponseRange().GetKvs(); len(kvs) == 1 {
			if _, derr := DecodeNode(node.ID, kvs[0].Value); derr != nil {
				err = &ForeignValueError{Key: key, Err: derr}
			}
		}
	}
	if err != nil {
		lease.Close(ctx)
		return nil, fmt.Errorf("discovery: register %s: %w", node.ID, err)
	}
	node.Incarnation = txn.Header.Revision
	return newRegistration(lease, r, key, node), nil
}

// Registration is one node's key under its lease. It is safe for concurrent
// use. Like concurrency.Session: Done fires when the registration is over,
// and Close revokes the lease, which deletes the key. The registration is
// over when the lease is lost, and also when the key is deleted (or taken
// over by another lease) while the lease lives, as with `etcdctl del`: a
// node without a key is invisible to clients, so an agent must not go on as
// if it were registered.
type Registration struct {
	*Lease
	r   *Registry
	key string

	mu   sync.Mutex // guards node and err
	node Node
	err  error // ErrKeyDeleted once the key is gone while the lease lived

	over      chan struct{} // closed by end when the registration is over; Done returns it
	endOnce   sync.Once
	stopWatch context.CancelFunc // stops watchKey
	watchDone chan struct{}      // closed when watchKey returns
}

func newRegistration(lease *Lease, r *Registry, key string, node Node) *Registration {
	ctx, cancel := context.WithCancel(context.Background())
	g := &Registration{
		Lease: lease, r: r, key: key, node: node,
		over: make(chan struct{}), stopWatch: cancel, watchDone: make(chan struct{}),
	}
	go g.watchKey(ctx)
	return g
}

// Done is closed when the registration is over: the lease is lost, the key
// was deleted or taken over while the lease lived (Err says which), or
// Close was called.
func (g *Registration) Done() <-chan struct{} { return g.over }

// Err says why Done closed: ErrKeyDeleted, ErrLeaseLost, or ErrClosedLease
// after Close.
func (g *Registration) Err() error {
	g.mu.Lock()
	err := g.err
	g.mu.Unlock()
	if err != nil {
		return err
	}
	return g.Lease.Err()
}

// Close revokes the lease, which deletes the key (see Lease.Close). Safe to
// call more than once.
func (g *Registration) Close(ctx context.Context) error {
	g.stopWatch()
	<-g.watchDone
	err := g.Lease.Close(ctx)
	g.end()
	return err
}

func (g *Registration) end() { g.endOnce.Do(func() { close(g.over) }) }

// Node is the value as last written.
func (g *Registration) Node() Node {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.node
}

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
		If(clientv3.Compare(clientv3.LeaseValue(g.key), "=", g.ID())).
		Then(clientv3.OpPut(g.key, string(val), clientv3.WithLease(g.ID()))).
		Commit()
	if err != nil {
		return fmt.Errorf("discovery: update %s: %w", n.ID, err)
	}
	if !txn.Succeeded {
		return fmt.Errorf("discovery: update %s: %w", n.ID, ErrLeaseLost)
	}
	g.mu.Lock()
	g.node = n
	g.mu.Unlock()
	return nil
}
