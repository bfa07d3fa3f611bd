package discovery

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"slices"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// EtcdConfig says how to reach etcd. The zero value is not usable: Endpoints
// must be set.
type EtcdConfig struct {
	// Endpoints, e.g. ["http://127.0.0.1:2379"]. No default.
	Endpoints []string
	// DialTimeout bounds the first connection and the reachability check.
	// Default: 5s.
	DialTimeout time.Duration
	// Username and Password for etcd auth. Default: none.
	Username, Password string
	// TLS for https endpoints. Default: none.
	TLS *tls.Config
}

// ParseEndpoints splits a comma-separated list and adds "http://" where a
// scheme is missing.
func ParseEndpoints(s string) []string {
	var out []string
	for _, e := range strings.Split(s, ",") {
		e = strings.TrimSpace(e)
		if e == "" {
			continue
		}
		if !strings.Contains(e, "://") {
			e = "http://" + e
		}
		out = append(out, e)
	}
	return out
}

// Dial connects to etcd and checks that it answers, so a wrong address is a
// clear error at start rather than a silent hang later.
func Dial(ctx context.Context, cfg EtcdConfig) (*clientv3.Client, error) {
	cfg = cfg.withDefaults()
	cli, err := Connect(cfg)
	if err != nil {
		return nil, err
	}
	cctx, cancel := context.WithTimeout(ctx, cfg.DialTimeout)
	defer cancel()
	if _, err := cli.Get(cctx, "/pubmesh-ping", clientv3.WithCountOnly()); err != nil {
		cli.Close()
		return nil, fmt.Errorf("discovery: etcd %s unreachable: %w", strings.Join(cfg.Endpoints, ","), explain(err, cfg))
	}
	return cli, nil
}

func (cfg EtcdConfig) withDefaults() EtcdConfig {
	if cfg.DialTimeout == 0 {
		cfg.DialTimeout = 5 * time.Second
	}
	return cfg
}

// Connect returns an etcd client without checking that etcd answers: it
// fails only on a bad configuration, and the client connects (and
// reconnects) in the background. It is for a long-running process that must
// start before etcd does, such as a node agent, whose Run waits for etcd
// (broker.Agent logs "waiting for etcd"); a command that needs etcd now
// should use Dial.
func Connect(cfg EtcdConfig) (*clientv3.Client, error) {
	if len(cfg.Endpoints) == 0 {
		return nil, errors.New("discovery: no etcd endpoints")
	}
	cfg = cfg.withDefaults()
	if cfg.TLS == nil && slices.ContainsFunc(cfg.Endpoints, func(e string) bool { return strings.HasPrefix(e, "https://") }) {
		// https without a TLS config: verify against the system's roots
		// rather than speak plain text to a TLS port.
		cfg.TLS = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:            cfg.Endpoints,
		DialTimeout:          cfg.DialTimeout,
		DialKeepAliveTime:    2 * time.Second,
		DialKeepAliveTimeout: 2 * time.Second,
		Username:             cfg.Username,
		Password:             cfg.Password,
		TLS:                  cfg.TLS,
		Logger:               zap.NewNop(),
		// gRPC's default reconnect backoff grows to 2 minutes; after an etcd
		// restart that is longer than a lease TTL, and leases would expire
		// only because the client waits. Retry at least every second.
		DialOptions: []grpc.DialOption{grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: time.Second},
			MinConnectTimeout: time.Second,
		})},
	})
	if err != nil {
		return nil, fmt.Errorf("discovery: etcd %s: %w", strings.Join(cfg.Endpoints, ","), explain(err, cfg))
	}
	return cli, nil
}

// explain adds a hint to a permission error without a user, and replaces a
// bare timeout, which is all gRPC reports when a
// connection never comes up, with what went wrong on the first endpoint
// that shows it: connection refused, a TLS handshake failure (unknown CA,
// expired or missing certificate), or TLS spoken to a plain endpoint.
func explain(err error, cfg EtcdConfig) error {
	if errors.Is(err, rpctypes.ErrPermissionDenied) && cfg.Username == "" {
		return fmt.Errorf("%w (etcd has authentication enabled: give a user and its password, --etcd-user and --etcd-password-file)", err)
	}
	if !errors.Is(err, context.DeadlineExceeded) && status.Code(err) != codes.DeadlineExceeded && status.Code(err) != codes.Unavailable {
		return err
	}
	timeout := min(cfg.DialTimeout, 2*time.Second)
	for _, ep := range cfg.Endpoints {
		if why := probeEndpoint(ep, cfg.TLS, timeout); why != nil {
			return fmt.Errorf("%w (%v)", err, why)
		}
	}
	return err
}

// probeEndpoint connects to one endpoint as the gRPC client would, and
// returns why that fails, or nil if it seems fine.
func probeEndpoint(ep string, tc *tls.Config, timeout time.Duration) error {
	u, err := url.Parse(ep)
	if err != nil || u.Host == "" {
		return nil
	}
	d := &net.Dialer{Timeout: timeout}
	conn, err := d.Dial("tcp", u.Host)
	if err != nil {
		return err
	}
	conn.Close()
	if u.Scheme != "https" && tc == nil {
		// Does a plain endpoint in fact speak TLS? Only the handshake is
		// tried; nothing is sent over it.
		probe := &tls.Config{InsecureSkipVerify: true} //nolint:gosec // detects TLS, sends nothing
		if c, err := tls.DialWithDialer(d, "tcp", u.Host, probe); err == nil {
			c.Close()
			return fmt.Errorf("%s speaks TLS: use https:// and the etcd CA (--etcd-cacert)", u.Host)
		}
		return nil
	}
	if tc == nil {
		tc = &tls.Config{}
	}
	tc = tc.Clone()
	if tc.ServerName == "" {
		tc.ServerName = u.Hostname()
	}
	c, err := tls.DialWithDialer(d, "tcp", u.Host, tc)
	if err != nil {
		return fmt.Errorf("TLS handshake with %s: %w", u.Host, err)
	}
	defer c.Close()
	// With TLS 1.3 a server that refuses the client's certificate says so
	// after the handshake; an HTTP/2 server that accepts it sends its
	// SETTINGS at once.
	c.SetReadDeadline(time.Now().Add(timeout))
	if _, err := c.Read(make([]byte, 1)); err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return nil
		}
		return fmt.Errorf("TLS with %s: %w", u.Host, err)
	}
	return nil
}
