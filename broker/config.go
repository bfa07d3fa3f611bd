package broker

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pubmesh/pubmesh/clusterconfig"
	"github.com/pubmesh/pubmesh/discovery"
	"github.com/pubmesh/pubmesh/internal/hostaddr"
)

// Config of an Agent. The zero value of every field means its default, and
// New copies the Config, so the caller may reuse or change it afterwards.
type Config struct {
	// Registry is where the node registers, and where it reads the cluster
	// configuration it applies to its Redis. Required.
	Registry *discovery.Registry

	// ID names the node in the cluster: 1-128 of [A-Za-z0-9._:-].
	// Default: "<hostname>-<port>".
	ID string

	// Bind is the address the redis-server child listens on. Ignored with
	// Attach. Default: 127.0.0.1.
	Bind string
	// Port the redis-server child listens on. Ignored with Attach.
	// Default: 7000.
	Port int
	// Advertise is the host:port clients dial, written into the registry.
	// Default: Bind:Port; when Bind is 0.0.0.0 or ::, <hostname>:Port if the
	// host name resolves to one of this machine's non-loopback addresses,
	// else the first global unicast address of an interface (IPv4 first):
	// never a loopback address, which other machines cannot dial (see
	// hostaddr.Reachable).
	Advertise string

	// Attach is the host:port of a Redis the agent did not start and does not
	// own: the agent only watches and registers it, and never stops it.
	// Default: none (the agent starts its own redis-server).
	Attach string

	// RedisServer is the redis-server binary, a path or a name looked up in
	// PATH. Default: "redis-server".
	RedisServer string
	// DataDir holds the child's redis.conf (the child keeps no data: no RDB,
	// no AOF). It is created with mode 0700 if missing and kept at exit.
	// Default: a new temporary directory, removed when Run returns.
	DataDir string
	// OutputBufferLimit, when set, is the Redis's client-output-buffer-limit
	// for pub/sub clients, whatever the cluster configuration says: it
	// overrides node.output_buffer_limit for this node. Default: zero, follow
	// the cluster configuration (whose default is hard 64 MiB, soft 16 MiB
	// for 60s; see DefaultOutputBufferLimit for why).
	OutputBufferLimit BufferLimit
	// MaxMemory, when set, is the Redis's maxmemory in bytes, whatever the
	// cluster configuration says: it overrides node.maxmemory for this node.
	// A negative value forces "no limit" (maxmemory 0). Default: 0, follow the
	// cluster configuration (whose default is no limit).
	MaxMemory int64
	// StartTimeout bounds how long a starting redis-server may take to
	// answer PING. Default: 10s.
	StartTimeout time.Duration
	// StopTimeout is how long a stopping redis-server gets after SIGTERM
	// before SIGKILL. Default: 5s.
	StopTimeout time.Duration
	// RestartBackoff is the first wait before restarting a child that
	// exited; it doubles on each exit up to RestartBackoffMax, and starts
	// over once a child has run for 10s. Default: 100ms.
	RestartBackoff time.Duration
	// RestartBackoffMax caps the restart wait. Default: 5s.
	RestartBackoffMax time.Duration

	// HealthInterval is how often the agent PINGs Redis. After a miss the
	// next PING follows at once (a PING that timed out took the interval
	// already), so a hung Redis leaves after about HealthFailures ×
	// HealthTimeout: 0.6-0.8 s with the defaults. Default: 200ms.
	HealthInterval time.Duration
	// HealthTimeout bounds one PING, so a hung (SIGSTOPped) Redis counts as
	// a miss. Default: HealthInterval (200ms with the defaults).
	HealthTimeout time.Duration
	// HealthFailures is how many PINGs in a row may miss before the node
	// leaves the cluster (its key is deleted). Default: 3.
	HealthFailures int

	// JoinTimeout bounds the default JoinGate, the join handshake: the node
	// turns ready once every fanout client registered in etcd has acked that
	// it is subscribed there, or after JoinTimeout, logging the clients that
	// did not answer. Default: 10s.
	JoinTimeout time.Duration
	// JoinGate is called after the node registers as joining, and the node
	// turns ready when it returns nil. It must return soon after ctx is done
	// (the node left, or the agent stops). An error makes the node leave and
	// register again after a backoff. Default: JoinHandshake(Registry,
	// JoinTimeout, Logger).
	JoinGate func(ctx context.Context, n discovery.Node) error
	// DrainTimeout bounds each of the drain's two waits: the DrainGate, and
	// then the hand-off of the node's history to the other ready nodes, so
	// the key is deleted at most twice DrainTimeout after the node turned
	// draining. It is a fallback: both usually end far sooner. Default: 10s.
	DrainTimeout time.Duration
	// DrainGate is called while the node is draining, with a ctx that ends
	// after DrainTimeout (or earlier, when Shutdown's ctx ends); the key is
	// deleted when it returns. Its error is logged, not fatal.
	// Default: DrainHandshake(Registry, <plain Redis options>, Logger): every
	// registered client's released ack, then empty pub/sub output buffers.
	DrainGate func(ctx context.Context, n discovery.Node) error

	// LeaseTTL is the registry lease: a crashed agent's node disappears
	// this long after its last keep-alive. Default: 5s.
	LeaseTTL time.Duration

	// Password is what clients (and the agent's own health checks)
	// authenticate to the node's Redis with. The child's redis.conf holds
	// only its SHA-256, never the password; it is never on a command line
	// nor in etcd. With Attach, the agent authenticates with it but does not
	// configure the Redis. Default: none: no authentication, which is
	// refused on a non-loopback Bind unless Insecure is set.
	Password string
	// ExtraPasswords are also accepted by the child (not used by the
	// agent), so that a password can be rotated without a moment where
	// clients holding the old or the new one are refused. See
	// docs/security.md. Default: none.
	ExtraPasswords []string
	// Username, if set, is a Redis ACL user that may only use pub/sub (and
	// PING, INFO, CLIENT LIST for the agent) and history: the publish script
	// and the stream and set commands of docs/history.md, on the keys pm:h*
	// only; the default user is disabled.
	// Without it, the default user has Password and every permission, as
	// with requirepass. Needs Password. Default: none.
	Username string
	// TLSCertFile and TLSKeyFile, if set, make the child serve TLS only, on
	// Port (tls-port, and port 0), and the node is registered with tls, so
	// clients connect with TLS and verify the certificate. Not supported
	// with Attach. Default: none (plain TCP).
	TLSCertFile, TLSKeyFile string
	// TLSClientCAFile, if set with TLSCertFile, makes the child require a
	// client certificate signed by this CA (mutual TLS). The agent's health
	// checks then present TLSCertFile, which must allow client
	// authentication, like Redis's own tls-client-cert-file default.
	// Default: none (clients need no certificate).
	TLSClientCAFile string
	// Insecure allows a non-loopback Bind without a Password. Default: false.
	Insecure bool
	// PeerTLS is how the agent connects to the other nodes of the cluster
	// when a drain hands its history off to them (it authenticates there
	// with Username and Password: the nodes of a cluster share their
	// credentials). When set, every other node must be registered with
	// tls, as for a fanout client with TLS settings. Default: derived from
	// the node's own TLS settings: without TLSCertFile, none (plain TCP; a
	// node registered with tls is verified against the system's roots);
	// with TLSCertFile, TLS to every node, verified against
	// TLSClientCAFile's CAs when set (the node's own certificate must be
	// signed by it, so its peers' are expected to be too) or else the
	// system's roots, presenting the node's certificate when
	// TLSClientCAFile is set (mutual TLS), as the health checks do.
	PeerTLS *tls.Config

	// Logger. Default: slog.Default().
	Logger *slog.Logger
	// Registerer receives the agent's metrics (see metrics.go). Give each
	// agent its own, e.g. prometheus.WrapRegistererWith(
	// prometheus.Labels{"node": id}, reg). Default: none (metrics are kept
	// but not exported).
	Registerer prometheus.Registerer
}

// BufferLimit is a redis client-output-buffer-limit: a client is
// disconnected when its pending output reaches Hard, or stays above Soft for
// SoftFor. The same type is the cluster configuration's
// node.output_buffer_limit.
type BufferLimit = clusterconfig.BufferLimit

// DefaultOutputBufferLimit is the default pub/sub limit of a node's Redis
// (the cluster configuration's node.output_buffer_limit when not set):
// hard 64 MiB, soft 16 MiB for 60s, twice Redis's own 32mb/8mb/60. A pubmesh
// subscriber is one connection per service instance carrying all of its
// channels, so it is busier than a typical Redis subscriber and should ride
// out a GC pause or a short network stall. The limit still exists so that
// one stuck consumer cannot take all of the node's memory: the worst case is
// 64 MiB per subscribed connection, and the client that is cut off
// resubscribes.
var DefaultOutputBufferLimit = clusterconfig.DefaultNode.OutputBufferLimit

// ParseBufferLimit parses "HARD SOFT SECONDS" as in redis.conf, with sizes
// in bytes or with a kb/mb/gb suffix (1024-based), e.g. "64mb 16mb 60".
func ParseBufferLimit(s string) (BufferLimit, error) {
	b, err := clusterconfig.ParseBufferLimit(s)
	if err != nil {
		return b, fmt.Errorf("broker: %w", err)
	}
	return b, nil
}

// withDefaults returns a copy of c with every zero field set to its default.
func (c Config) withDefaults() Config {
	if c.Bind == "" {
		c.Bind = "127.0.0.1"
	}
	if c.Port == 0 {
		c.Port = 7000
	}
	if c.ID == "" {
		c.ID = DefaultID(c.portForID())
	}
	if c.Advertise == "" {
		switch {
		case c.Attach != "":
			c.Advertise = c.Attach
		case isUnspecified(c.Bind):
			if h := hostaddr.Default(); h != "" {
				c.Advertise = net.JoinHostPort(h, strconv.Itoa(c.Port))
			}
		default:
			c.Advertise = net.JoinHostPort(c.Bind, strconv.Itoa(c.Port))
		}
	}
	if c.RedisServer == "" {
		c.RedisServer = "redis-server"
	}
	if c.StartTimeout == 0 {
		c.StartTimeout = 10 * time.Second
	}
	if c.StopTimeout == 0 {
		c.StopTimeout = 5 * time.Second
	}
	if c.RestartBackoff == 0 {
		c.RestartBackoff = 100 * time.Millisecond
	}
	if c.RestartBackoffMax == 0 {
		c.RestartBackoffMax = 5 * time.Second
	}
	if c.HealthInterval == 0 {
		c.HealthInterval = 200 * time.Millisecond
	}
	if c.HealthTimeout == 0 {
		c.HealthTimeout = c.HealthInterval
	}
	if c.HealthFailures == 0 {
		c.HealthFailures = 3
	}
	if c.JoinTimeout == 0 {
		c.JoinTimeout = 10 * time.Second
	}
	if c.DrainTimeout == 0 {
		c.DrainTimeout = 10 * time.Second
	}
	if c.LeaseTTL == 0 {
		c.LeaseTTL = 5 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.JoinGate == nil {
		c.JoinGate = JoinHandshake(c.Registry, c.JoinTimeout, c.Logger)
	}
	if c.DrainGate == nil {
		c.DrainGate = DrainHandshake(c.Registry, c.redisOptions, c.Logger)
	}
	if c.Registerer == nil {
		c.Registerer = prometheus.NewRegistry()
	}
	return c
}

// portForID is the port in the default ID: the child's, or the attached one.
func (c Config) portForID() int {
	if c.Attach != "" {
		if _, p, err := net.SplitHostPort(c.Attach); err == nil {
			n, _ := strconv.Atoi(p)
			return n
		}
	}
	return c.Port
}

// Validate checks the configuration before anything starts, so that a
// mistake is one clear error: the ID, the --attach address, the durations,
// the credentials and TLS files (and that a non-loopback Bind has a
// password), that the redis-server binary exists and that the port can be
// bound now.
// New calls it; the CLI calls it before it dials etcd.
func (c Config) Validate() error {
	c = c.withDefaults()
	if err := discovery.ValidID(c.ID); err != nil {
		return fmt.Errorf("broker: node id: %w", err)
	}
	if c.Attach != "" {
		if err := ValidAddr(c.Attach); err != nil {
			return fmt.Errorf("broker: invalid attach address: %w", err)
		}
	} else {
		if c.Port < 1 || c.Port > 65535 {
			return fmt.Errorf("broker: invalid port %d: want 1-65535", c.Port)
		}
		if net.ParseIP(c.Bind) == nil {
			return fmt.Errorf("broker: invalid bind address %q: want an IP address", c.Bind)
		}
		// Before anything binds the address.
		if err := c.validateSecurity(); err != nil {
			return err
		}
		if _, err := exec.LookPath(c.RedisServer); err != nil {
			return fmt.Errorf("broker: redis-server binary %q not found (install redis-server or set --redis-server)", c.RedisServer)
		}
		if err := checkPortFree(c.Bind, c.Port); err != nil {
			return err
		}
	}
	if c.Advertise == "" {
		return fmt.Errorf("broker: bind %s: no address of this machine other machines could dial (no interface with a global address, and the host name resolves to none): set the advertise address (--advertise HOST:PORT)", c.Bind)
	}
	if err := ValidAddr(c.Advertise); err != nil {
		return fmt.Errorf("broker: invalid advertise address: %w", err)
	}
	if c.Attach != "" {
		if err := c.validateSecurity(); err != nil {
			return err
		}
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"health interval", c.HealthInterval}, {"health timeout", c.HealthTimeout},
		{"join timeout", c.JoinTimeout}, {"drain timeout", c.DrainTimeout},
		{"lease TTL", c.LeaseTTL}, {"start timeout", c.StartTimeout},
		{"stop timeout", c.StopTimeout}, {"restart backoff", c.RestartBackoff},
	} {
		if d.v < 0 {
			return fmt.Errorf("broker: %s %s is negative", d.name, d.v)
		}
	}
	if c.LeaseTTL < time.Second {
		return fmt.Errorf("broker: lease TTL %s is below etcd's 1s minimum", c.LeaseTTL)
	}
	if c.HealthFailures < 1 {
		return fmt.Errorf("broker: health failures %d: want at least 1", c.HealthFailures)
	}
	return nil
}

// ValidAddr checks a host:port address: a non-empty host and a port in
// 1-65535. It does not resolve the host.
func ValidAddr(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%q: want HOST:PORT", addr)
	}
	if host == "" {
		return fmt.Errorf("%q: missing host", addr)
	}
	if strings.ContainsAny(host, " /") {
		return fmt.Errorf("%q: bad host", addr)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("%q: port must be 1-65535", addr)
	}
	return nil
}

// DefaultID is "<hostname>-<port>", the default node id.
func DefaultID(port int) string {
	return fmt.Sprintf("%s-%d", hostname(), port)
}

func hostname() string {
	h, err := os.Hostname()
	if err != nil || h == "" {
		return "localhost"
	}
	// Keep the id valid for discovery.ValidID whatever the host is called.
	return strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '.', r == '-', r == '_':
			return r
		}
		return '-'
	}, h)
}

func isUnspecified(host string) bool {
	ip := net.ParseIP(host)
	return ip != nil && ip.IsUnspecified()
}

func isLoopback(host string) bool {
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// ErrPortInUse is wrapped by the error New and Run return when the node's
// port is taken by another program.
var ErrPortInUse = errors.New("already in use")

// checkPortFree fails with a clear message when bind:port is taken.
func checkPortFree(bind string, port int) error {
	addr := net.JoinHostPort(bind, strconv.Itoa(port))
	l, err := net.Listen("tcp", addr)
	if err != nil {
		if errors.Is(err, syscall.EADDRINUSE) {
			return fmt.Errorf("broker: port %d on %s is %w (another redis-server or pubmesh node? pick another --port)", port, bind, ErrPortInUse)
		}
		return fmt.Errorf("broker: cannot listen on %s: %w", addr, err)
	}
	l.Close()
	return nil
}

// sleep waits d or until ctx is done, and returns ctx.Err() in that case.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
