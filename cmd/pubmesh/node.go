package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/urfave/cli/v2"

	"github.com/pubmesh/pubmesh/broker"
)

func nodeCommand() *cli.Command {
	return &cli.Command{
		Name:      "node",
		Usage:     "run one node: start and supervise a redis-server (or --attach to one) and register it in etcd",
		UsageText: "pubmesh node [--etcd ENDPOINTS] [--cluster NAME] [--id ID] [--port P] [--bind ADDR] [--attach HOST:PORT] [options]",
		Description: "The node registers as joining once its Redis answers PING, and turns ready once every fanout\n" +
			"client registered in etcd has acked that it subscribed there (--join-timeout is the fallback).\n" +
			"After --health-failures missed PINGs it leaves the cluster (its key is deleted) until Redis answers\n" +
			"again; a redis-server child that exits is restarted. SIGTERM or SIGINT drains it: state draining\n" +
			"until every client acked it no longer publishes there and Redis flushed its output buffers\n" +
			"(--drain-timeout is the fallback), then its key is deleted and the child is stopped.\n" +
			"A second signal stops at once.\n\n" +
			"The node applies the cluster configuration's node.output_buffer_limit and node.maxmemory to its\n" +
			"Redis live (CONFIG SET, within a second, no restart); --pubsub-buffer-limit and --maxmemory, when\n" +
			"given, override them for this node (see pubmesh config and docs/operations.md).\n\n" +
			"Security: --redis-password-file (or PUBMESH_REDIS_PASSWORD) makes Redis require a password; the\n" +
			"child's redis.conf (mode 0600) holds only its hash. --tls-cert/--tls-key serve TLS only. A --bind\n" +
			"other than loopback is refused without a password unless --insecure. See docs/security.md.\n\n" +
			"A drain hands the node's history off to the other ready nodes: the agent connects to them with\n" +
			"the node's --redis-user and password (the nodes of a cluster share them) and, for TLS nodes,\n" +
			"the TLS settings of --redis-cacert, --redis-cert and --redis-key (by default derived from the\n" +
			"node's --tls-client-ca and --tls-cert).",
		Flags: append(append(etcdFlags(),
			&cli.StringFlag{
				Name:        "id",
				Usage:       "node id, unique in the cluster",
				DefaultText: "<hostname>-<port>",
				EnvVars:     []string{"PUBMESH_NODE_ID"},
			},
			&cli.IntFlag{
				Name:    "port",
				Value:   7000,
				Usage:   "port of the redis-server child",
				EnvVars: []string{"PUBMESH_PORT"},
			},
			&cli.StringFlag{
				Name:    "bind",
				Value:   "127.0.0.1",
				Usage:   "address the redis-server child listens on (protected mode is on for loopback)",
				EnvVars: []string{"PUBMESH_BIND"},
			},
			&cli.StringFlag{
				Name:        "advertise",
				Usage:       "host:port clients dial, as registered",
				DefaultText: "BIND:PORT; with BIND 0.0.0.0, <hostname>:PORT if the name resolves to a non-loopback address of this machine, else an interface's global address",
				EnvVars:     []string{"PUBMESH_ADVERTISE"},
			},
			&cli.StringFlag{
				Name:        "attach",
				Usage:       "register the Redis at HOST:PORT, which runs elsewhere, instead of starting one; the agent only watches it",
				DefaultText: "none",
				EnvVars:     []string{"PUBMESH_ATTACH"},
			},
			&cli.StringFlag{
				Name:        "data-dir",
				Usage:       "directory for the child's redis.conf (no data is persisted)",
				DefaultText: "a temporary directory, removed at exit",
				EnvVars:     []string{"PUBMESH_DATA_DIR"},
			},
			&cli.StringFlag{
				Name:        "tls-cert",
				Usage:       "serve TLS only, with this certificate (PEM); the node is registered with tls and clients verify it",
				DefaultText: "none: plain TCP",
				EnvVars:     []string{"PUBMESH_NODE_TLS_CERT"},
			},
			&cli.StringFlag{
				Name:        "tls-key",
				Usage:       "private key (PEM) of --tls-cert",
				DefaultText: "none",
				EnvVars:     []string{"PUBMESH_NODE_TLS_KEY"},
			},
			&cli.StringFlag{
				Name:        "tls-client-ca",
				Usage:       "require client certificates signed by this CA (mutual TLS); --tls-cert must then allow client authentication too",
				DefaultText: "none: no client certificate needed",
				EnvVars:     []string{"PUBMESH_NODE_TLS_CLIENT_CA"},
			},
			&cli.BoolFlag{
				Name:    "insecure",
				Usage:   "allow a non-loopback --bind without a Redis password (anyone who reaches the port can read and publish everything)",
				EnvVars: []string{"PUBMESH_NODE_INSECURE"},
			},
			logLevelFlag("info"),
		), append(agentFlags(10*time.Second), peerTLSFlags()...)...),
		Action: runNode,
	}
}

func runNode(c *cli.Context) error {
	if c.Args().Present() {
		return usageError{fmt.Errorf("unexpected argument %q (see pubmesh node --help)", c.Args().First())}
	}
	sigs, stopSignals := notifySignals()
	defer stopSignals()
	log, err := newLogger(c)
	if err != nil {
		return usageError{err}
	}
	cfg, err := agentConfig(c, log)
	if err != nil {
		return usageError{err}
	}
	cfg.Port, cfg.Bind, cfg.Advertise, cfg.DataDir = c.Int("port"), c.String("bind"), c.String("advertise"), c.String("data-dir")
	cfg.TLSCertFile, cfg.TLSKeyFile, cfg.TLSClientCAFile = c.String("tls-cert"), c.String("tls-key"), c.String("tls-client-ca")
	cfg.Insecure = c.Bool("insecure")
	// Without --redis-cacert the agent derives how it reaches the other
	// nodes from its own TLS settings (broker.Config.PeerTLS). With it, a
	// node with mutual TLS still presents its own certificate unless
	// --redis-cert says otherwise.
	if ca := c.String("redis-cacert"); ca != "" || c.String("redis-cert") != "" || c.String("redis-key") != "" {
		cert, key := c.String("redis-cert"), c.String("redis-key")
		if cert == "" && key == "" && cfg.TLSClientCAFile != "" {
			cert, key = cfg.TLSCertFile, cfg.TLSKeyFile
		}
		peer, err := clientTLS(log, "redis", ca, cert, key)
		if err != nil {
			return err
		}
		cfg.PeerTLS = peer
	}
	if a := c.String("attach"); a != "" {
		if err := broker.ValidAddr(a); err != nil {
			return usageError{fmt.Errorf("invalid --attach: %w", err)}
		}
		cfg.Attach = a
	}
	cfg.ID = c.String("id")
	if cfg.ID == "" {
		port := cfg.Port
		if cfg.Attach != "" {
			_, p, _ := net.SplitHostPort(cfg.Attach)
			port, _ = strconv.Atoi(p)
		}
		cfg.ID = broker.DefaultID(port)
	}
	// Local mistakes (port taken, no redis-server, bad address) first: they
	// need no etcd.
	if err := cfg.Validate(); err != nil {
		return err
	}
	ecfg, err := etcdConfig(c, log)
	if err != nil {
		return err
	}
	// The agent waits for etcd itself (logging "waiting for etcd").
	reg, etcd, err := openRegistryWith(c.Context, ecfg, c.String("cluster"), log, false)
	if err != nil {
		return err
	}
	defer etcd.Close()
	cfg.Registry = reg

	metrics := newMetricsRegistry()
	cfg.Registerer = prometheus.WrapRegistererWith(prometheus.Labels{"node": cfg.ID}, metrics)
	agent, err := broker.New(cfg)
	if err != nil {
		return err
	}
	if addr := c.String("metrics-listen"); addr != "" {
		stop, err := serveMetrics(addr, metrics, log)
		if err != nil {
			return err
		}
		defer stop()
	}
	go func() {
		select {
		case <-agent.Ready():
			log.Info("node ready", "id", cfg.ID, "addr", agent.Addr(), "cluster", reg.Cluster())
		case <-agent.Done():
		}
	}()
	return runAgents(c.Context, log, sigs, cfg.DrainTimeout, false, agent)
}

// peerTLSFlags are how a node's agent connects to the other nodes (a
// drain's history hand-off): the fanout clients' TLS flags, with usages
// for a node.
func peerTLSFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{
			Name:        "redis-cacert",
			Usage:       "CA bundle (PEM) that verifies the other nodes' certificates when a drain hands history off to them",
			DefaultText: "--tls-client-ca if set, else the system's CAs (with --tls-cert); none without TLS",
			EnvVars:     []string{"PUBMESH_REDIS_CACERT"},
		},
		&cli.StringFlag{
			Name:        "redis-cert",
			Usage:       "client certificate (PEM) presented to the other nodes during a hand-off; needs --redis-key",
			DefaultText: "--tls-cert when --tls-client-ca is set",
			EnvVars:     []string{"PUBMESH_REDIS_CERT"},
		},
		&cli.StringFlag{
			Name:        "redis-key",
			Usage:       "private key (PEM) of --redis-cert",
			DefaultText: "none",
			EnvVars:     []string{"PUBMESH_REDIS_KEY"},
		},
	}
}

// notifySignals catches SIGINT and SIGTERM from the start of a command, so
// that one arriving before the agents run still ends it cleanly.
func notifySignals() (<-chan os.Signal, func()) {
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	return sigs, func() { signal.Stop(sigs) }
}

// runAgents runs the agents until they all return (drained), or with
// untilSignal until a signal arrives on sigs. SIGINT/SIGTERM drains them all,
// with Shutdown bounded by drainTimeout plus a margin; a second signal stops
// them at once. If an agent fails, it stops the others and returns that
// error.
func runAgents(ctx context.Context, log *slog.Logger, sigs <-chan os.Signal, drainTimeout time.Duration, untilSignal bool, agents ...*broker.Agent) error {
	select {
	case sig := <-sigs:
		log.Info("signal before start: not starting", "signal", sig)
		return nil
	default:
	}
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()

	errc := make(chan error, len(agents))
	for _, a := range agents {
		go func() { errc <- a.Run(runCtx) }()
	}
	shutdown := func() {
		// A drain waits for its handshake, then hands history off: each
		// bounded by drainTimeout.
		sctx, scancel := context.WithTimeout(context.Background(), 2*drainTimeout+15*time.Second)
		defer scancel()
		go func() {
			select {
			case sig := <-sigs:
				log.Warn("second signal: stopping now, without the drain", "signal", sig)
				cancel()
			case <-sctx.Done():
			}
		}()
		done := make(chan struct{})
		for _, a := range agents {
			go func() {
				if err := a.Shutdown(sctx); err != nil {
					log.Warn("shutdown cut short", "node", a.ID(), "err", err)
				}
				done <- struct{}{}
			}()
		}
		for range agents {
			<-done
		}
	}

	var first error
	for left := len(agents); left > 0 || untilSignal; {
		select {
		case sig := <-sigs:
			log.Info("signal: draining", "signal", sig)
			shutdown()
			// Every Run has returned now; collect their results.
			for ; left > 0; left-- {
				if err := <-errc; err != nil && first == nil && !errors.Is(err, context.Canceled) {
					first = err
				}
			}
			return first
		case err := <-errc:
			left--
			if err != nil && first == nil {
				first, untilSignal = err, false
				if left > 0 {
					log.Error("a node failed; stopping the others", "err", err)
					cancel()
				}
			}
		}
	}
	return first
}
