//go:build devtools

package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/urfave/cli/v2"

	"github.com/pubmesh/pubmesh/broker"
	"github.com/pubmesh/pubmesh/discovery"
	"github.com/pubmesh/pubmesh/internal/embedetcd"
	"github.com/pubmesh/pubmesh/internal/freeport"
	"github.com/pubmesh/pubmesh/ws"
)

func devCommand() *cli.Command {
	return &cli.Command{
		Name:      "dev",
		Usage:     devUsage,
		UsageText: "pubmesh dev [--nodes 3] [--etcd-listen 127.0.0.1:2379] [--base-port 7001] [--data-dir DIR] [--cluster NAME] [--secure]",
		Description: "Starts a real etcd inside the process and one node agent (each with its own redis-server) per\n" +
			"port from --base-port up, and prints each node when it is ready. Other commands reach it with\n" +
			"their default --etcd. Ctrl-C drains and stops everything; no process is left behind.\n\n" +
			"On an etcd without a cluster configuration it writes one that keeps history for every channel\n" +
			"(namespace \"**\": history_size 1000, history_ttl 10m), so that the demo page recovers what it\n" +
			"missed; an existing configuration (a kept --data-dir) is left as it is.\n\n" +
			"With --secure it runs the way production should: a CA and certificates made at start in DIR/tls,\n" +
			"random passwords in DIR/secrets (mode 0600), etcd with mutual TLS and a root user, Redis nodes\n" +
			"with TLS (mutual) and a password. It writes DIR/env.sh: `source DIR/env.sh` in another shell and\n" +
			"publish, subscribe, nodes and drain use all of it.",
		Flags: append([]cli.Flag{
			&cli.BoolFlag{
				Name:    "secure",
				Usage:   "TLS and passwords everywhere, with generated certificates and passwords (see DIR/env.sh)",
				EnvVars: []string{"PUBMESH_DEV_SECURE"},
			},
			&cli.IntFlag{
				Name:    "nodes",
				Value:   3,
				Usage:   "number of nodes (1-64)",
				EnvVars: []string{"PUBMESH_DEV_NODES"},
			},
			&cli.StringFlag{
				Name:    "etcd-listen",
				Value:   "127.0.0.1:2379",
				Usage:   "host:port the embedded etcd serves clients on",
				EnvVars: []string{"PUBMESH_ETCD_LISTEN"},
			},
			&cli.IntFlag{
				Name:    "base-port",
				Value:   7001,
				Usage:   "port of the first node; node i listens on base-port+i",
				EnvVars: []string{"PUBMESH_BASE_PORT"},
			},
			&cli.StringFlag{
				Name:        "data-dir",
				Usage:       "directory for etcd's data (DIR/etcd) and the nodes' redis.conf (DIR/<node-id>), kept at exit",
				DefaultText: "a temporary directory, removed at exit",
				EnvVars:     []string{"PUBMESH_DATA_DIR"},
			},
			&cli.StringFlag{
				Name:    "gateway-listen",
				Value:   "127.0.0.1:8080",
				Usage:   "host:port of a WebSocket gateway (demo page at /): WITHOUT authentication, or with --secure HTTPS/WSS and JWTs; empty for none",
				EnvVars: []string{"PUBMESH_GATEWAY_LISTEN"},
			},
			clusterFlag(),
			logLevelFlag("warn"),
		}, append(agentFlags(5*time.Second), tracingFlags()...)...),
		Action: runDev,
	}
}

func runDev(c *cli.Context) error {
	if c.Args().Present() {
		return usageError{fmt.Errorf("unexpected argument %q (see pubmesh dev --help)", c.Args().First())}
	}
	sigs, stopSignals := notifySignals()
	defer stopSignals()
	log, err := newLogger(c)
	if err != nil {
		return usageError{err}
	}
	n, base := c.Int("nodes"), c.Int("base-port")
	if n < 1 || n > 64 {
		return usageError{fmt.Errorf("invalid --nodes %d: want 1-64", n)}
	}
	if base < 1 || base+n-1 > 65535 {
		return usageError{fmt.Errorf("invalid --base-port %d for %d nodes", base, n)}
	}
	etcdListen := c.String("etcd-listen")
	if _, _, err := net.SplitHostPort(etcdListen); err != nil {
		return usageError{fmt.Errorf("invalid --etcd-listen %q: want HOST:PORT", etcdListen)}
	}
	if !freeport.Free(etcdListen) {
		return fmt.Errorf("--etcd-listen %s is already in use (another pubmesh dev or etcd running? pick another --etcd-listen)", etcdListen)
	}

	// Check every node before starting anything.
	proto, err := agentConfig(c, log)
	if err != nil {
		return usageError{err}
	}
	dir := c.String("data-dir")
	if dir == "" {
		if dir, err = os.MkdirTemp("", "pubmesh-dev-"); err != nil {
			return err
		}
		defer os.RemoveAll(dir)
	} else if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("--data-dir: %w", err)
	}
	var sec *devSecurity
	if c.Bool("secure") {
		if sec, err = setupDevSecurity(dir, proto.Password); err != nil {
			return fmt.Errorf("--secure: %w", err)
		}
		proto.Password = sec.redisPassword
		proto.TLSCertFile, proto.TLSKeyFile, proto.TLSClientCAFile = sec.certs.Redis.Cert, sec.certs.Redis.Key, sec.certs.CA
	}
	cfgs := make([]broker.Config, n)
	for i := range cfgs {
		cfg := proto
		cfg.Port = base + i
		cfg.Bind = "127.0.0.1"
		cfg.ID = "dev-" + strconv.Itoa(cfg.Port)
		cfg.DataDir = filepath.Join(dir, cfg.ID)
		if addr := net.JoinHostPort(cfg.Bind, strconv.Itoa(cfg.Port)); !freeport.Free(addr) {
			// Said here, not by the agent: dev's flag is --base-port.
			return fmt.Errorf("port %d (node %d of %d from --base-port %d) is already in use (another redis-server or pubmesh dev? pick another --base-port)",
				cfg.Port, i+1, n, base)
		}
		if err := cfg.Validate(); err != nil {
			return err
		}
		cfgs[i] = cfg
	}

	ecfg := embedetcd.Config{ClientAddr: etcdListen, Dir: filepath.Join(dir, "etcd")}
	if sec != nil {
		ecfg.TLS, ecfg.RootPassword = sec.etcdTLS(), sec.etcdPassword
	}
	etcd, err := embedetcd.Start(ecfg)
	if err != nil {
		return err
	}
	defer func() {
		// After the agents have left. A client still connected from another
		// terminal (pubmesh subscribe) would hold etcd's close for ~6 s
		// waiting for its watch to end: Ctrl-C must not take that long.
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		defer cancel()
		if etcd.Shutdown(ctx) != nil {
			log.Debug("etcd: clients still connected; exiting without waiting for them")
		}
	}()
	out := c.App.Writer
	fmt.Fprintf(out, "etcd: %s  (cluster %q)\n", etcd.Endpoint(), c.String("cluster"))

	client := discovery.EtcdConfig{Endpoints: []string{etcd.Endpoint()}, DialTimeout: 10 * time.Second}
	if sec != nil {
		if client, err = sec.etcdClient(log, etcd.Endpoint()); err != nil {
			return err
		}
		if err := sec.writeEnv(etcd.Endpoint(), c.String("cluster"), proto.Username, c.String("gateway-listen")); err != nil {
			return fmt.Errorf("--secure: %w", err)
		}
		fmt.Fprintf(out, "secure: mutual TLS and passwords; certificates in %s, passwords in %s (mode 0600)\n",
			sec.certs.Dir, filepath.Dir(sec.etcdPasswordFile))
		fmt.Fprintf(out, "to use it from another shell: source %s\n", shellQuote(sec.envFile))
	}
	reg, cli, err := openRegistryAt(c.Context, client, c.String("cluster"), log)
	if err != nil {
		return err
	}
	defer cli.Close()
	// Before the nodes and the gateway start, so that they run it from the
	// start.
	if err := writeDevConfig(c.Context, reg, out); err != nil {
		return err
	}
	metrics := newMetricsRegistry()
	agents := make([]*broker.Agent, n)
	for i, cfg := range cfgs {
		cfg.Registry = reg
		cfg.Registerer = prometheus.WrapRegistererWith(prometheus.Labels{"node": cfg.ID}, metrics)
		if agents[i], err = broker.New(cfg); err != nil {
			return err
		}
	}
	tp, stopTracing, err := startTracing(c, "pubmesh-dev", log)
	if err != nil {
		return err
	}
	defer stopTracing() // after the gateway stopped (deferred later, run first)
	if addr := c.String("gateway-listen"); addr != "" {
		// Started before the nodes turn ready: its fanout client is then part
		// of their join handshake, so it hears every message from the start.
		gw := gatewaySetup{EtcdClient: cli, Cluster: reg.Cluster(), Listen: addr, WS: ws.Config{Insecure: true}, Log: log, Metrics: metrics,
			RedisUser: proto.Username, RedisPassword: proto.Password}
		if sec != nil {
			if gw.TLS, gw.RedisTLS, gw.WS, err = sec.gateway(log); err != nil {
				return fmt.Errorf("--secure: %w", err)
			}
		}
		gw.WS.TracerProvider = tp.TracerProvider()
		// The admin page is on, behind a password kept in the data
		// directory (the same one on every start with --data-dir).
		adminFile := filepath.Join(dir, "admin-password")
		if sec != nil {
			adminFile = filepath.Join(filepath.Dir(sec.etcdPasswordFile), "admin-password")
		}
		adminPassword, err := secretFile(adminFile, "")
		if err != nil {
			return fmt.Errorf("admin password: %w", err)
		}
		gw.WS.AdminPassword = []byte(adminPassword)
		url, stopGateway, err := startGateway(c.Context, gw)
		if err != nil {
			return fmt.Errorf("%w (pick another --gateway-listen, or --gateway-listen '' for none)", err)
		}
		defer stopGateway()
		if sec != nil {
			fmt.Fprintf(out, "gateway: %s  (wss://%s/ws) with a JWT: after sourcing env.sh, `bin/pubmesh token --sub me --subscribe '*' --publish '*'`; browsers must trust %s\n",
				url, addr, sec.certs.CA)
		} else {
			// No authentication: the gateway itself warns on stderr, once.
			fmt.Fprintf(out, "gateway: %s  (ws://%s/ws)\n", url, addr)
		}
		fmt.Fprintf(out, "admin: %sadmin  (the password is in %s)\n", url, adminFile)
	}
	if addr := c.String("metrics-listen"); addr != "" {
		stop, err := serveMetrics(addr, metrics, log)
		if err != nil {
			return err
		}
		defer stop()
	}

	// Print each node as it turns ready, then how to use the cluster.
	var (
		printMu sync.Mutex
		ready   int
		wg      sync.WaitGroup
	)
	for _, a := range agents {
		wg.Add(1)
		go func() {
			defer wg.Done()
			select {
			case <-a.Ready():
			case <-a.Done():
				return
			}
			printMu.Lock()
			defer printMu.Unlock()
			fmt.Fprintf(out, "node %s ready at %s\n", a.ID(), a.Addr())
			if ready++; ready == n {
				etcdFlag := ""
				if etcdListen != "127.0.0.1:2379" {
					etcdFlag = " --etcd " + etcdListen
				}
				if reg.Cluster() != "default" {
					etcdFlag += " --cluster " + reg.Cluster()
				}
				try := "bin/pubmesh nodes" + etcdFlag
				if sec != nil { // env.sh sets the endpoint and cluster
					try = "source " + shellQuote(sec.envFile) + "; bin/pubmesh nodes"
				}
				fmt.Fprintf(out, "cluster ready: %d nodes. Try `%s` in another terminal. Ctrl-C stops everything.\n", n, try)
			}
			printMu.Unlock()
			<-a.Done()
			printMu.Lock()
			fmt.Fprintf(out, "node %s has left\n", a.ID())
		}()
	}
	err = runAgents(c.Context, log, sigs, proto.DrainTimeout, true, agents...)
	wg.Wait()
	if err == nil {
		fmt.Fprintln(out, "stopped")
	}
	return err
}
