package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/redis/go-redis/v9"
	"github.com/urfave/cli/v2"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/pubmesh/pubmesh/broker"
	"github.com/pubmesh/pubmesh/clusterconfig"
	"github.com/pubmesh/pubmesh/discovery"
)

// Shared flags. Every flag has an environment variable PUBMESH_*; urfave/cli
// prints it and the default in --help. docs/operations.md lists them all.

// etcdFlags say how to reach the registry: --etcd, --etcd-timeout,
// --cluster, and etcd's TLS and auth (etcdSecurityFlags).
func etcdFlags() []cli.Flag {
	return append([]cli.Flag{
		&cli.StringFlag{
			Name:    "etcd",
			Value:   "127.0.0.1:2379",
			Usage:   "etcd endpoints, comma-separated host:port or URLs",
			EnvVars: []string{"PUBMESH_ETCD"},
		},
		&cli.DurationFlag{
			Name:    "etcd-timeout",
			Value:   5 * time.Second,
			Usage:   "how long to wait for etcd to answer at start",
			EnvVars: []string{"PUBMESH_ETCD_TIMEOUT"},
		},
		clusterFlag(),
	}, etcdSecurityFlags()...)
}

func clusterFlag() cli.Flag {
	return &cli.StringFlag{
		Name:    "cluster",
		Value:   "default",
		Usage:   "cluster name; clusters share etcd but nothing else",
		EnvVars: []string{"PUBMESH_CLUSTER"},
	}
}

// logLevelFlag is --log-level with the command's default.
func logLevelFlag(def string) cli.Flag {
	return &cli.StringFlag{
		Name:    "log-level",
		Value:   def,
		Usage:   "log level: debug, info, warn or error (logs go to stderr)",
		EnvVars: []string{"PUBMESH_LOG_LEVEL"},
	}
}

// newLogger builds the slog logger of --log-level.
func newLogger(c *cli.Context) (*slog.Logger, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(c.String("log-level"))); err != nil {
		return nil, fmt.Errorf("invalid --log-level %q: want debug, info, warn or error", c.String("log-level"))
	}
	log := slog.New(slog.NewTextHandler(c.App.ErrWriter, &slog.HandlerOptions{Level: lvl}))
	// go-redis logs to stderr by itself (e.g. every refused TLS connection);
	// what matters reaches the user as our own errors, so its lines go to
	// debug.
	redis.SetLogger(redisLogger{log})
	return log, nil
}

// redisLogger sends go-redis's log lines to a slog logger at debug level.
type redisLogger struct{ log *slog.Logger }

func (l redisLogger) Printf(ctx context.Context, format string, v ...any) {
	l.log.DebugContext(ctx, "go-redis: "+fmt.Sprintf(format, v...))
}

// openRegistry dials etcd (checking that it answers) and returns the
// registry of --cluster. The caller closes the client.
func openRegistry(c *cli.Context, log *slog.Logger) (*discovery.Registry, *clientv3.Client, error) {
	ecfg, err := etcdConfig(c, log)
	if err != nil {
		return nil, nil, err
	}
	return openRegistryAt(c.Context, ecfg, c.String("cluster"), log)
}

// openClusterRegistry opens the registry for a command a person waits for
// (nodes, clients, config): it fails at once, with a hint, when etcd does
// not answer.
func openClusterRegistry(c *cli.Context) (*discovery.Registry, *clientv3.Client, error) {
	log, err := newLogger(c)
	if err != nil {
		return nil, nil, usageError{err}
	}
	if err := discovery.ValidID(c.String("cluster")); err != nil {
		return nil, nil, fmt.Errorf("invalid --cluster: %w", err)
	}
	reg, etcd, err := openRegistry(c, log)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: is a cluster running there? Start one with `pubmesh dev` (or `make run`), or point --etcd at yours", err)
	}
	return reg, etcd, nil
}

// jsonFlag is --json of the listing commands.
func jsonFlag(usage string) cli.Flag {
	return &cli.BoolFlag{Name: "json", Usage: usage, EnvVars: []string{"PUBMESH_JSON"}}
}

func openRegistryAt(ctx context.Context, ecfg discovery.EtcdConfig, cluster string, log *slog.Logger) (*discovery.Registry, *clientv3.Client, error) {
	return openRegistryWith(ctx, ecfg, cluster, log, true)
}

// openRegistryWith opens the registry; with check, it fails at once when
// etcd does not answer (a command a person waits for), without, it leaves
// the waiting to the caller (a node agent, which retries with backoff and
// logs what it waits for, so a cold start with a slow etcd does not
// crash-loop).
func openRegistryWith(ctx context.Context, ecfg discovery.EtcdConfig, cluster string, log *slog.Logger, check bool) (*discovery.Registry, *clientv3.Client, error) {
	if err := discovery.ValidID(cluster); err != nil {
		return nil, nil, fmt.Errorf("invalid --cluster: %w", err)
	}
	dial := discovery.Dial
	if !check {
		dial = func(_ context.Context, cfg discovery.EtcdConfig) (*clientv3.Client, error) {
			return discovery.Connect(cfg)
		}
	}
	cli, err := dial(ctx, ecfg)
	if err != nil {
		return nil, nil, err
	}
	reg, err := discovery.New(cli, discovery.Config{Cluster: cluster, Logger: log})
	if err != nil {
		cli.Close()
		return nil, nil, err
	}
	return reg, cli, nil
}

// agentFlags tune node agents, for `node` and `dev`. drainDefault differs:
// a dev cluster stops quicker.
func agentFlags(drainDefault time.Duration) []cli.Flag {
	return append([]cli.Flag{
		&cli.DurationFlag{
			Name:    "health-interval",
			Value:   200 * time.Millisecond,
			Usage:   "how often the agent PINGs its Redis",
			EnvVars: []string{"PUBMESH_HEALTH_INTERVAL"},
		},
		&cli.DurationFlag{
			Name:        "health-timeout",
			Usage:       "how long one PING may take before it counts as a miss",
			DefaultText: "--health-interval",
			EnvVars:     []string{"PUBMESH_HEALTH_TIMEOUT"},
		},
		&cli.IntFlag{
			Name:    "health-failures",
			Value:   3,
			Usage:   "PINGs missed in a row before the node leaves the cluster (its key is deleted)",
			EnvVars: []string{"PUBMESH_HEALTH_FAILURES"},
		},
		&cli.DurationFlag{
			Name:    "join-timeout",
			Value:   10 * time.Second,
			Usage:   "a joining node turns ready once every fanout client acked its subscriptions there, or after this (clients that did not answer are logged)",
			EnvVars: []string{"PUBMESH_JOIN_TIMEOUT"},
		},
		&cli.DurationFlag{
			Name:    "drain-timeout",
			Value:   drainDefault,
			Usage:   "a draining node leaves once every fanout client acked it no longer publishes there and Redis flushed its output, or after this",
			EnvVars: []string{"PUBMESH_DRAIN_TIMEOUT"},
		},
		&cli.DurationFlag{
			Name:    "lease-ttl",
			Value:   5 * time.Second,
			Usage:   "etcd lease TTL: a crashed agent's node disappears this long after its last keep-alive",
			EnvVars: []string{"PUBMESH_LEASE_TTL"},
		},
		&cli.StringFlag{
			Name:    "redis-server",
			Value:   "redis-server",
			Usage:   "redis-server binary, a path or a name in PATH",
			EnvVars: []string{"PUBMESH_REDIS_SERVER"},
		},
		&cli.StringFlag{
			Name:        "pubsub-buffer-limit",
			Usage:       "client-output-buffer-limit for pub/sub clients: \"HARD SOFT SECONDS\"; a subscriber this far behind is disconnected. Overrides the cluster configuration's node.output_buffer_limit",
			DefaultText: "the cluster configuration's, 64mb 16mb 60 unless set there",
			EnvVars:     []string{"PUBMESH_PUBSUB_BUFFER_LIMIT"},
		},
		&cli.StringFlag{
			Name:        "maxmemory",
			Usage:       "Redis maxmemory: bytes, or a size such as 512mb; 0 for no limit. Overrides the cluster configuration's node.maxmemory",
			DefaultText: "the cluster configuration's, no limit unless set there",
			EnvVars:     []string{"PUBMESH_MAXMEMORY"},
		},
		&cli.StringFlag{
			Name:        "metrics-listen",
			Usage:       "serve Prometheus metrics at http://ADDR/metrics, e.g. 127.0.0.1:9121",
			DefaultText: "off",
			EnvVars:     []string{"PUBMESH_METRICS_LISTEN"},
		},
	}, redisAuthFlags()...)
}

// agentConfig reads the agentFlags into a broker.Config.
func agentConfig(c *cli.Context, log *slog.Logger) (broker.Config, error) {
	cfg := broker.Config{
		HealthInterval: c.Duration("health-interval"),
		HealthTimeout:  c.Duration("health-timeout"),
		HealthFailures: c.Int("health-failures"),
		JoinTimeout:    c.Duration("join-timeout"),
		DrainTimeout:   c.Duration("drain-timeout"),
		LeaseTTL:       c.Duration("lease-ttl"),
		RedisServer:    c.String("redis-server"),
		Logger:         log,
	}
	// Only a flag given on the command line (or in its environment
	// variable) overrides the cluster configuration.
	if c.IsSet("pubsub-buffer-limit") {
		limit, err := broker.ParseBufferLimit(c.String("pubsub-buffer-limit"))
		if err != nil {
			return broker.Config{}, fmt.Errorf("invalid --pubsub-buffer-limit: %w", err)
		}
		cfg.OutputBufferLimit = limit
	}
	if c.IsSet("maxmemory") {
		n, err := clusterconfig.ParseSize(c.String("maxmemory"))
		if err != nil {
			return broker.Config{}, fmt.Errorf("invalid --maxmemory: %w", err)
		}
		cfg.MaxMemory = n
		if n == 0 {
			cfg.MaxMemory = -1 // broker.Config's "no limit, whatever the cluster says"
		}
	}
	for _, d := range []string{"health-interval", "join-timeout", "drain-timeout", "lease-ttl"} {
		if c.Duration(d) <= 0 {
			return broker.Config{}, fmt.Errorf("invalid --%s %s: must be positive", d, c.Duration(d))
		}
	}
	if c.Int("health-failures") < 1 {
		return broker.Config{}, fmt.Errorf("invalid --health-failures %d: must be at least 1", c.Int("health-failures"))
	}
	// dev --secure generates the password of a --redis-user.
	user, passwords, err := redisCredentials(c, log, c.Bool("secure"))
	if err != nil {
		return broker.Config{}, err
	}
	cfg.Username = user
	if len(passwords) > 0 {
		cfg.Password, cfg.ExtraPasswords = passwords[0], passwords[1:]
	}
	return cfg, nil
}

// newMetricsRegistry is a Prometheus registry with the Go and process
// collectors.
func newMetricsRegistry() *prometheus.Registry {
	r := prometheus.NewRegistry()
	r.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return r
}

// serveMetrics serves g at http://addr/metrics until the returned stop is
// called. A taken address is an error at once.
func serveMetrics(addr string, g prometheus.Gatherer, log *slog.Logger) (stop func(), err error) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("--metrics-listen %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(g, promhttp.HandlerOpts{}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics server", "err", err)
		}
	}()
	log.Info("serving metrics", "url", "http://"+l.Addr().String()+"/metrics")
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		<-done
	}, nil
}

// hostPID names this process in drain requests and client ids:
// "host:pid:random". The random part keeps ids apart where host and pid
// repeat, as in containers, where every process is PID 1.
func hostPID() string {
	h, _ := os.Hostname()
	return fmt.Sprintf("%s:%d:%08x", h, os.Getpid(), rand.Uint32())
}

// oneLine flattens an error message to one line.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}
