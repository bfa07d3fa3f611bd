package fanout

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"
	"unicode"
	"unicode/utf8"
	"unsafe"

	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.opentelemetry.io/otel/trace"

	"github.com/pubmesh/pubmesh/discovery"
)

var (
	// ErrClosed is returned by calls on a closed Client or Subscription.
	ErrClosed = errors.New("fanout: closed")
	// ErrNoNodes is returned by Publish when no ready node took the message.
	ErrNoNodes = errors.New("fanout: no ready nodes")
)

// MaxChannelLen is the longest channel name or pattern, in bytes.
const MaxChannelLen = 256

// ValidateChannel checks a channel name or pattern: 1 to 256 bytes of
// printable UTF-8 with no spaces or control characters.
func ValidateChannel(name string) error {
	if name == "" {
		return errors.New("fanout: empty channel name")
	}
	if len(name) > MaxChannelLen {
		return fmt.Errorf("fanout: channel name of %d bytes is longer than %d", len(name), MaxChannelLen)
	}
	if !utf8.ValidString(name) {
		return fmt.Errorf("fanout: channel name %q is not valid UTF-8", name)
	}
	for _, r := range name {
		if unicode.IsSpace(r) || unicode.IsControl(r) || !unicode.IsPrint(r) {
			return fmt.Errorf("fanout: channel name %q has a space or control character", name)
		}
	}
	return nil
}

// Client publishes to and subscribes on every node of a pubmesh cluster.
// It is safe for concurrent use by many goroutines.
//
// It watches etcd, keeps a connection to every live node, subscribes every
// channel there, and publishes each message to its channel's home node
// (rendezvous hashing over the ready nodes). It takes part in the join and
// drain handshakes: it acks a joining node once subscribed there, and a
// draining one once it no longer publishes there.
type Client struct {
	cfg     Config
	log     *slog.Logger
	m       *metrics
	etcd    *clientv3.Client
	ownEtcd bool
	reg     *discovery.Registry
	pubID   uint64
	seq     atomic.Uint64
	prevs   *prevTable
	subs    *registry
	seqr    *sequencer

	// connMu guards nodes and snap; ready is rebuilt under it and read
	// lock-free by Publish.
	connMu sync.Mutex
	nodes  map[string]*nodeConn
	snap   discovery.Snapshot
	ready  atomic.Pointer[readySet]
	readyC chan struct{} // closed and replaced when the ready set changes

	stale    staleness // whether membership may be out of date (Gap)
	presence atomic.Pointer[discovery.ClientRegistration]
	conf     *discovery.ConfigWatcher
	hist     histCache
	livePos  map[string]*livePos // guarded by seqr.mu
	// histReads bounds the history reads in flight (maxHistoryReads), below
	// the node connections' pool size.
	histReads   chan struct{}
	histFlights histFlights // reads of the same history shared by calls that wait together (histflight.go)
	runsMu      sync.Mutex  // guards runs, runsAt, runsRev: the cached node runs (historyRuns)
	runs        []discovery.HistoryRun
	runsAt      time.Time
	runsRev     int64         // the membership revision they were read under
	kick        chan struct{} // asks the membership loop to re-evaluate acks
	async       *asyncPublisher
	tracer      trace.Tracer // nil: tracing off (trace.go)

	closed    atomic.Bool
	ctx       context.Context
	cancel    context.CancelFunc
	wg        sync.WaitGroup // membership and presence loops, conn closers
	closeOnce sync.Once
}

// readySet is the publish targets, immutable once built.
type readySet struct {
	conns []*nodeConn
	seeds []uint64
}

// New connects to etcd, registers the client and starts following the
// cluster. It returns once the first membership snapshot is applied (the
// node connections are still being made: Publish waits for a ready node,
// Subscribe for each node's confirmation).
//
// While etcd does not answer, New waits for it, retrying with backoff
// (0.2 s doubling to 5 s) and logging what it waits for, until ctx ends:
// then it returns ctx's error, wrapped, with the last etcd error. A
// mistake that retrying cannot fix (etcd credentials or TLS) is returned
// at once.
func New(ctx context.Context, cfg Config) (*Client, error) {
	cfg = cfg.withDefaults()
	if err := discovery.ValidID(cfg.ID); err != nil {
		return nil, fmt.Errorf("fanout: client id: %w", err)
	}
	c := &Client{
		cfg: cfg, log: cfg.Logger.With("client", cfg.ID), m: newMetrics(cfg.Registerer), tracer: newTracer(cfg.TracerProvider),
		pubID: rand.Uint64() | 1, prevs: newPrevTable(65536), subs: newRegistry(),
		nodes: map[string]*nodeConn{}, livePos: map[string]*livePos{}, histReads: make(chan struct{}, maxHistoryReads), readyC: make(chan struct{}), kick: make(chan struct{}, 1),
	}
	c.async = newAsyncPublisher(c, cfg.MaxPendingPublishBytes)
	c.seqr = newSequencer(cfg.DedupWindow, cfg.ReorderWindow, c.m, c.deliver)
	c.ready.Store(&readySet{})
	var err error
	if c.etcd, c.ownEtcd, err = c.etcdClient(ctx); err != nil {
		return nil, err
	}
	reg, err := discovery.New(c.etcd, discovery.Config{Cluster: cfg.Cluster, Logger: cfg.Logger})
	if err != nil {
		c.closeEtcd()
		return nil, fmt.Errorf("fanout: %w", err)
	}
	c.reg = reg
	if cfg.Registerer != nil {
		cfg.Registerer.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
			Namespace: "pubmesh", Subsystem: "fanout", Name: "bad_node_values_total",
			Help: "Node registrations in etcd that did not decode or validate, and were ignored (and logged).",
		}, func() float64 { return float64(reg.BadValues()) }))
	}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	if err := c.untilEtcd(ctx, "read the cluster configuration", c.startConfig); err != nil {
		c.cancel()
		c.closeEtcd()
		return nil, err
	}
	// Register before watching, so that a node joining from now on waits
	// for this client's ack.
	if err := c.untilEtcd(ctx, "register the client", c.register); err != nil {
		c.cancel()
		c.conf.Close()
		c.closeEtcd()
		return nil, err
	}
	snaps := reg.Watch(c.ctx, discovery.WatchOptions{})
	select {
	case s, ok := <-snaps:
		if ok {
			c.apply(s)
			c.snapshotApplied(s)
		}
	case <-ctx.Done():
		c.Close()
		return nil, fmt.Errorf("fanout: first membership snapshot: %w", ctx.Err())
	}
	c.wg.Add(3)
	go c.follow(snaps)
	go c.keepPresence()
	go c.async.run()
	return c, nil
}

func (c *Client) closeEtcd() {
	if c.ownEtcd {
		c.etcd.Close()
	}
}

// ID is the client's id in etcd.
func (c *Client) ID() string { return c.cfg.ID }

// Nodes returns the latest membership snapshot.
func (c *Client) Nodes() discovery.Snapshot {
	c.connMu.Lock()
	defer c.connMu.Unlock()
	return c.snap
}

func (c *Client) isClosed() bool { return c.closed.Load() }

// conns returns the current node connections.
func (c *Client) conns() []*nodeConn {
	c.connMu.Lock()
	defer c.connMu.Unlock()
	out := make([]*nodeConn, 0, len(c.nodes))
	for _, nc := range c.nodes {
		out = append(out, nc)
	}
	return out
}

// dispatch decodes a message read by the subscription
// connection's own reader: channel, pattern (nil for none) and raw are
// its buffer, valid only during the call. The envelope is parsed in
// place; the channel and pattern names are the registry's (no copy while
// subscribed); the payload is copied once, for the subscribers to keep.
func (c *Client) dispatch(nc *nodeConn, channel, pattern, raw []byte) {
	env, payload, ok := parseEnvelope(unsafe.String(unsafe.SliceData(raw), len(raw)))
	pat := ""
	if pattern != nil {
		pat = c.subs.intern(pattern, true)
	}
	m := &Message{Channel: c.subs.intern(channel, false), Pattern: pat, Node: nc.node.ID}
	if payload != "" {
		m.Payload = []byte(payload)
	}
	if ok {
		m.pub, m.seq, m.prev = env.pub, env.seq, env.prev
		m.PublishedAt = time.Unix(0, env.ts)
		if env.trace != "" && c.tracer != nil {
			c.traceReceipt(m, nc, env)
		}
	}
	c.seqr.push(m, pat, env, ok)
}

// deliver hands m to every subscription that wants it; called in order by
// the sequencer.
func (c *Client) deliver(m *Message, pattern string) {
	c.trackPosition(m)
	c.subs.each(m.Channel, pattern, func(s *Subscription) { s.put(m, c.cfg.Overflow, c.m) })
	if m.tr != nil {
		traceDelivered(m)
	}
}

// Close closes every Subscription's channel and every node connection
// (which ends its subscriptions, with no UNSUBSCRIBE per channel), removes
// the client from etcd and waits for its goroutines. A second call returns
// ErrClosed.
func (c *Client) Close() error {
	err := ErrClosed
	c.closeOnce.Do(func() {
		err = nil
		c.closed.Store(true)
		c.async.closeAsync(c.cfg.PublishTimeout)
		for _, s := range c.subs.all() {
			s.close(false) // the connections close below: no UNSUBSCRIBE
		}
		c.cancel()
		c.stopStale()
		c.wg.Wait()
		c.connMu.Lock()
		conns := c.nodes
		c.nodes = map[string]*nodeConn{}
		c.connMu.Unlock()
		for _, nc := range conns {
			nc.close(0)
		}
		c.seqr.stop()
		c.conf.Close()
		if p := c.presence.Load(); p != nil {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			p.Close(ctx)
			cancel()
		}
		c.closeEtcd()
	})
	return err
}
