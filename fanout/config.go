package fanout

import (
	"crypto/tls"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.opentelemetry.io/otel/trace"

	"github.com/pubmesh/pubmesh/discovery"
)

// Overflow says what a subscription does when its buffer is full.
type Overflow int

const (
	// DropOldest discards the oldest buffered message to make room, and
	// counts it in Subscription.Dropped and the
	// pubmesh_fanout_overflow_drops_total metric. A slow reader loses old
	// messages but never slows anyone else down.
	DropOldest Overflow = iota
	// Block waits for the reader. It slows delivery from every node for the
	// whole client; if the reader stays stuck, Redis disconnects the client
	// when its output buffer limit is reached, and messages are lost there.
	Block
)

func (o Overflow) String() string {
	if o == Block {
		return "block"
	}
	return "drop-oldest"
}

// Config of a Client. Zero values mean the documented default; New copies
// the Config before filling them in.
type Config struct {
	// Etcd says how to reach etcd when EtcdClient is nil.
	// Default: endpoint http://127.0.0.1:2379.
	Etcd discovery.EtcdConfig
	// EtcdClient, if set, is used as is and is not closed by Close.
	// Default: dial Etcd.
	EtcdClient *clientv3.Client
	// Cluster to join. Default: "default".
	Cluster string
	// ID names this client in etcd, where node agents wait for its acks.
	// Default: <hostname>-<pid>-<8 random hex digits>. Two live clients
	// cannot share an id: New waits one LeaseTTL for the id (it may be this
	// service's previous run), then fails wrapping discovery.ErrClientIDTaken.
	ID string
	// Role says what the client is part of, for pubmesh clients and the
	// admin views: "gateway" for a pubmesh gateway, anything short for a
	// service. Default: empty.
	Role string
	// Replicas is how many nodes each message is published to. With 2, a
	// single node crash loses nothing; subscribers still deliver each message
	// once. Default: 1.
	Replicas int
	// SubscriptionBuffer is how many messages each Subscription buffers for
	// its reader. Default: 1024.
	SubscriptionBuffer int
	// Overflow is what a full subscription buffer does. Default: DropOldest.
	Overflow Overflow
	// DedupWindow is how many of each publisher's latest sequence numbers
	// the client remembers to drop duplicates (from Replicas: 2 or from a
	// publish retried on another node): a copy that comes more than
	// DedupWindow of that publisher's messages late is delivered again. It
	// costs DedupWindow/8 bytes per publisher seen (at most 1024 publishers
	// are remembered, the least recently seen forgotten first). Default:
	// 65536.
	DedupWindow int
	// ReorderWindow is how long a message that overtook an earlier one from
	// the same publisher on the same channel (possible only while the ready
	// set changes) is held back waiting for it. It only delays a message
	// whose predecessor is really lost (with a crashed node); one that is
	// merely late, because the process reading the old home was stalled
	// (CPU throttling, a loaded machine), arrives within it. 50 ms was too
	// short: under -race on a loaded 2-core machine a node key deleted by
	// hand (chaos scenario 11) delivered one message after its successor.
	// Default: 250ms.
	ReorderWindow time.Duration
	// PublishTimeout bounds one attempt to publish on one node, including
	// waiting in the node's queue and a new connection's handshake; on
	// expiry the node is marked suspect and the next node is tried (the
	// last node a publish can try is waited for, until go-redis's own
	// timeouts end the attempt). It is also the Redis read/write timeout,
	// and, plus DialTimeout, how long a subscription fence waits.
	// Default: 1s.
	PublishTimeout time.Duration
	// PublishQueue is how many publishes may wait for one node before
	// Publish blocks (bounded by its context and PublishTimeout).
	// Default: 8192.
	PublishQueue int
	// PublishConns is how many pipelined connections publish to each node.
	// Default: 2.
	PublishConns int
	// MaxBatch is the largest pipeline of publishes sent at once.
	// Default: 512.
	MaxBatch int
	// MaxPendingPublishBytes bounds the payload bytes of PublishAsync calls
	// not finished yet; a call that would go over it blocks until earlier
	// ones finish (bounded by its context), and is counted in
	// pubmesh_fanout_async_blocked_total. A single payload larger than it
	// is refused. Default: 16 MiB.
	MaxPendingPublishBytes int64
	// SuspectFor is how long a node that failed a publish is tried last,
	// before etcd says anything. Default: 2s.
	SuspectFor time.Duration
	// RemoveGrace is how long the subscription connection to a node that
	// left etcd stays open to read what is still in flight. Default: 2s.
	RemoveGrace time.Duration
	// WaitReady is how long Publish waits for a ready node when there is
	// none. Default: 5s.
	WaitReady time.Duration
	// DialTimeout for Redis connections. Default: 2s.
	DialTimeout time.Duration
	// Username and Password for the Redis nodes, sent on every connection
	// (HELLO/AUTH). A node that refuses them is reported as a *NodeError.
	// Default: none.
	Username, Password string
	// TLS, if set, is used for every node: RootCAs verifies them and, for
	// mutual TLS, Certificates holds the client certificate. A node
	// registered without tls is then refused (a *NodeError, without a
	// dial) rather than spoken to in plain text, so a registry entry cannot
	// downgrade the client. With TLS nil, nodes registered with tls are still dialled with
	// TLS, verified against the system's roots. Default: nil.
	TLS *tls.Config
	// LeaseTTL of the client's presence in etcd. It is also how long etcd
	// may stay unreachable before the client opens a Gap (its lease may
	// have expired, and nodes joined without it). Default: 5s.
	LeaseTTL time.Duration
	// Logger. Default: slog.Default().
	Logger *slog.Logger
	// Registerer receives the client's metrics. Default: none registered.
	Registerer prometheus.Registerer
	// TracerProvider, if set, traces publishes and deliveries (trace.go,
	// docs/operations.md "Traces"), and a sampled publish carries its
	// traceparent in the envelope. Default: nil, tracing off, at no cost.
	TracerProvider trace.TracerProvider
}

func (c Config) withDefaults() Config {
	if len(c.Etcd.Endpoints) == 0 {
		c.Etcd.Endpoints = []string{"http://127.0.0.1:2379"}
	}
	if c.Cluster == "" {
		c.Cluster = "default"
	}
	if c.ID == "" {
		host, _ := os.Hostname()
		if host == "" {
			host = "client"
		}
		c.ID = fmt.Sprintf("%s-%d-%08x", host, os.Getpid(), rand.Uint32())
	}
	def := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	defD := func(v *time.Duration, d time.Duration) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&c.Replicas, 1)
	def(&c.SubscriptionBuffer, 1024)
	def(&c.DedupWindow, 65536)
	def(&c.PublishQueue, 8192)
	def(&c.PublishConns, 2)
	def(&c.MaxBatch, 512)
	if c.MaxPendingPublishBytes <= 0 {
		c.MaxPendingPublishBytes = 16 << 20
	}
	defD(&c.ReorderWindow, 250*time.Millisecond)
	defD(&c.PublishTimeout, time.Second)
	defD(&c.SuspectFor, 2*time.Second)
	defD(&c.RemoveGrace, 2*time.Second)
	defD(&c.WaitReady, 5*time.Second)
	defD(&c.DialTimeout, 2*time.Second)
	defD(&c.LeaseTTL, 5*time.Second)
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}
