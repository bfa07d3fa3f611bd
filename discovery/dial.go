package discovery

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
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
	if len(cfg.Endpoints) == 0 {
		return nil, errors.New("discovery: no etcd endpoints")
	}
	if cfg.DialTimeout == 0 {
		cfg.DialTimeout = 5 * time.Second
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
		return nil, fmt.Errorf("discovery: etcd %s: %w", strings.Join(cfg.Endpoints, ","), err)
	}
	cctx, cancel := context.WithTimeout(ctx, cfg.DialTimeout)
	defer cancel()
	if _, err := cli.Get(cctx, "/pubmesh-ping", clientv3.WithCountOnly()); err != nil {
		cli.Close()
		return nil, fmt.Errorf("discovery: etcd %s unreachable: %w", strings.Join(cfg.Endpoints, ","), err)
	}
	return cli, nil
}
