package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/urfave/cli/v2"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/pubmesh/pubmesh/discovery"
	"github.com/pubmesh/pubmesh/fanout"
	"github.com/pubmesh/pubmesh/ws"
)

func gatewayCommand() *cli.Command {
	return &cli.Command{
		Name:      "gateway",
		Usage:     "serve WebSocket clients (browsers, apps) and an HTTP publish API on top of the cluster",
		UsageText: "pubmesh gateway [--listen 127.0.0.1:8080] (--jwt-secret S | --jwt-public-key FILE | --api-key K | --insecure)",
		Description: "Clients connect to ws://HOST/ws with a JWT (from `pubmesh token`) and speak the JSON protocol of\n" +
			"docs/protocol.md; backends POST JSON to /api/publish/CHANNEL with an API key or token. / is a demo\n" +
			"page, /pubmesh.js the JavaScript client, /admin the admin page (with --admin-password-file only), /healthz is 200 while a ready node is subscribed and takes publishes (503 with the reason otherwise), /metrics is\n" +
			"Prometheus. Without an auth flag the gateway refuses to start unless --insecure is given.\n" +
			"SIGINT/SIGTERM close every client with 1001 and stop within --shutdown-timeout.",
		Flags:  append(append(append(append(etcdFlags(), gatewayFlags()...), redisClientFlags()...), tracingFlags()...), logLevelFlag("info")),
		Action: runGateway,
	}
}

// gatewayFlags are the gateway's own flags (the limits' defaults come from
// package ws, so --help and docs/protocol.md name the same numbers).
func gatewayFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "listen", Value: "127.0.0.1:8080", Usage: "host:port to serve on", EnvVars: []string{"PUBMESH_GATEWAY_LISTEN"}},
		&cli.StringFlag{Name: "public-url", Usage: "base URL clients reach this gateway at (a balancer's, such as https://push.example.com/), as registered in etcd and listed by `pubmesh gateways`", DefaultText: "the --listen address; with 0.0.0.0 or ::, an address of this machine other machines can dial", EnvVars: []string{"PUBMESH_GATEWAY_PUBLIC_URL"}},
		&cli.StringFlag{Name: "tls-cert", Usage: "serve HTTPS and WSS with this certificate (PEM)", DefaultText: "none: plain HTTP and WS", EnvVars: []string{"PUBMESH_GATEWAY_TLS_CERT"}},
		&cli.StringFlag{Name: "tls-key", Usage: "private key (PEM) of --tls-cert", DefaultText: "none", EnvVars: []string{"PUBMESH_GATEWAY_TLS_KEY"}},
		&cli.StringFlag{Name: "jwt-secret", Usage: "HS256 secret that signs client tokens", DefaultText: "none", EnvVars: []string{"PUBMESH_JWT_SECRET"}},
		&cli.StringFlag{Name: "jwt-secret-file", Usage: "file holding the HS256 secret (trailing newline ignored)", DefaultText: "none", EnvVars: []string{"PUBMESH_JWT_SECRET_FILE"}},
		&cli.StringFlag{Name: "jwt-public-key", Usage: "PEM file of the RSA (RS256) or ECDSA (ES256) public key that verifies client tokens", DefaultText: "none", EnvVars: []string{"PUBMESH_JWT_PUBLIC_KEY"}},
		&cli.StringSliceFlag{Name: "api-key", Usage: "API key with full access, for backends (repeat or comma-separate for several)", DefaultText: "none", EnvVars: []string{"PUBMESH_API_KEY"}},
		&cli.StringFlag{Name: "api-key-file", Usage: "file with one API key per line", DefaultText: "none", EnvVars: []string{"PUBMESH_API_KEY_FILE"}},
		&cli.StringFlag{Name: "admin-password-file", Usage: "serve the admin page at /admin, behind the password in this file (trailing newline ignored; with systemd, LoadCredential= and ${CREDENTIALS_DIRECTORY}/NAME)", DefaultText: "none: no admin page", EnvVars: []string{"PUBMESH_ADMIN_PASSWORD_FILE"}},
		&cli.DurationFlag{Name: "admin-session-ttl", Value: ws.DefaultAdminSessionTTL, Usage: "how long an admin login lasts", EnvVars: []string{"PUBMESH_ADMIN_SESSION_TTL"}},
		&cli.BoolFlag{Name: "compression", Usage: "compress WebSocket frames (permessage-deflate) for clients that offer it: less bandwidth, more CPU per subscriber", EnvVars: []string{"PUBMESH_COMPRESSION"}},
		&cli.DurationFlag{Name: "write-delay", Usage: "how long a WebSocket connection's writer, woken by a frame, waits for more before writing them at once: fewer wake-ups and system calls per frame for high-rate subscribers, up to this much more latency (0: off)", EnvVars: []string{"PUBMESH_WRITE_DELAY"}},
		&cli.BoolFlag{Name: "insecure", Usage: "run without authentication: anyone who reaches the port may subscribe and publish to every channel", EnvVars: []string{"PUBMESH_INSECURE"}},
		&cli.StringSliceFlag{Name: "allow-origin", Usage: "browser origins allowed to connect: https://app.example.com, https://*.example.com or *", DefaultText: "the gateway's own origin", EnvVars: []string{"PUBMESH_ALLOW_ORIGIN"}},
		// The limits that are cluster configuration keys have no Value: unset,
		// the gateway follows the cluster configuration (live); set, the flag
		// wins for this gateway (see gatewayConfig).
		&cli.IntFlag{Name: "max-frame-bytes", Usage: "largest client frame; a larger one closes the connection (1009); overrides gateway.max_frame_bytes", DefaultText: clusterDefault(ws.DefaultMaxFrameBytes), EnvVars: []string{"PUBMESH_MAX_FRAME_BYTES"}},
		&cli.IntFlag{Name: "max-publish-bytes", Usage: "largest publish data, over WebSocket or HTTP; overrides every namespace's max_publish_bytes", DefaultText: clusterDefault(ws.DefaultMaxPublishBytes), EnvVars: []string{"PUBMESH_MAX_PUBLISH_BYTES"}},
		&cli.IntFlag{Name: "max-subscriptions", Usage: "subscriptions per connection (-1: no limit); overrides gateway.max_subscriptions", DefaultText: clusterDefault(ws.DefaultMaxSubscriptions), EnvVars: []string{"PUBMESH_MAX_SUBSCRIPTIONS"}},
		&cli.IntFlag{Name: "max-connections-per-subject", Usage: "WebSocket connections one token subject (sub) may hold open; one more gets HTTP 429 (-1: no limit); overrides gateway.max_connections_per_subject", DefaultText: clusterDefault(ws.DefaultMaxConnectionsPerSubject), EnvVars: []string{"PUBMESH_MAX_CONNECTIONS_PER_SUBJECT"}},
		&cli.IntFlag{Name: "max-channel-bytes", Value: ws.DefaultMaxChannelBytes, Usage: "longest channel name", EnvVars: []string{"PUBMESH_MAX_CHANNEL_BYTES"}},
		&cli.Float64Flag{Name: "publish-rate", Usage: "publishes per second per token subject, over WebSocket and HTTP together (API-key connections: per connection; -1: no limit); overrides gateway.publish_rate", DefaultText: clusterDefault(ws.DefaultPublishRate), EnvVars: []string{"PUBMESH_PUBLISH_RATE"}},
		&cli.IntFlag{Name: "publish-burst", Usage: "publishes a token subject (or an API-key connection) may send at once above --publish-rate; overrides gateway.publish_burst", DefaultText: clusterDefault(ws.DefaultPublishBurst), EnvVars: []string{"PUBMESH_PUBLISH_BURST"}},
		&cli.IntFlag{Name: "send-queue", Usage: "frames queued per connection; a client that lets it overflow is closed with 4008 \"slow consumer\"; overrides gateway.send_queue", DefaultText: clusterDefault(ws.DefaultSendQueue), EnvVars: []string{"PUBMESH_SEND_QUEUE"}},
		&cli.DurationFlag{Name: "ping-interval", Usage: "how often idle clients are pinged; one silent for this plus 10s is closed; overrides gateway.ping_interval", DefaultText: clusterDefault(ws.DefaultPingInterval), EnvVars: []string{"PUBMESH_PING_INTERVAL"}},
		&cli.DurationFlag{Name: "presence-ttl", Value: fanout.DefaultPresenceTTL, Usage: "how long a presence entry lives without a refresh (the gateway refreshes its own every third of it): a crashed gateway's clients leave presence within it, plus a third; every gateway of a cluster should use the same", EnvVars: []string{"PUBMESH_PRESENCE_TTL"}},
		&cli.DurationFlag{Name: "shutdown-timeout", Value: ws.DefaultShutdownTimeout, Usage: "how long a graceful shutdown may take", EnvVars: []string{"PUBMESH_SHUTDOWN_TIMEOUT"}},
		&cli.IntFlag{Name: "replicas", Value: 1, Usage: "nodes each message is published to (2: a single node crash loses nothing)", EnvVars: []string{"PUBMESH_REPLICAS"}},
	}
}

// clusterDefault is the --help default of a limit that follows the cluster
// configuration unless given.
func clusterDefault(v any) string { return fmt.Sprintf("cluster configuration (default %v)", v) }

// gatewayConfig reads the auth and limit flags. A limit flag that is not
// set (on the command line or in its environment variable) stays zero in
// ws.Config: the gateway then follows the cluster configuration.
func gatewayConfig(c *cli.Context, log *slog.Logger) (ws.Config, error) {
	cfg := ws.Config{
		Insecure:        c.Bool("insecure"),
		Compression:     c.Bool("compression"),
		WriteDelay:      c.Duration("write-delay"),
		AllowOrigins:    c.StringSlice("allow-origin"),
		MaxChannelBytes: c.Int("max-channel-bytes"),
		ShutdownTimeout: c.Duration("shutdown-timeout"),
		PresenceTTL:     c.Duration("presence-ttl"),
		Logger:          log,
	}
	for _, f := range []struct {
		name    string
		to      *int
		noLimit bool // -1 allowed
	}{
		{"max-frame-bytes", &cfg.MaxFrameBytes, false},
		{"max-publish-bytes", &cfg.MaxPublishBytes, false},
		{"publish-burst", &cfg.PublishBurst, false},
		{"send-queue", &cfg.SendQueue, false},
		{"max-subscriptions", &cfg.MaxSubscriptions, true},
		{"max-connections-per-subject", &cfg.MaxConnectionsPerSubject, true},
	} {
		if !c.IsSet(f.name) {
			continue
		}
		v := c.Int(f.name)
		if v == 0 || v < 0 && !f.noLimit {
			if f.noLimit {
				return ws.Config{}, fmt.Errorf("invalid --%s %d: must be positive, or -1 for no limit", f.name, v)
			}
			return ws.Config{}, fmt.Errorf("invalid --%s %d: must be positive", f.name, v)
		}
		*f.to = v
	}
	if c.IsSet("publish-rate") {
		if cfg.PublishRate = c.Float64("publish-rate"); cfg.PublishRate == 0 {
			return ws.Config{}, errors.New("invalid --publish-rate 0: must be positive, or -1 for no limit")
		}
	}
	if c.IsSet("ping-interval") {
		if cfg.PingInterval = c.Duration("ping-interval"); cfg.PingInterval <= 0 {
			return ws.Config{}, fmt.Errorf("invalid --ping-interval %s: must be positive", cfg.PingInterval)
		}
	}
	if c.Int("max-channel-bytes") < 1 {
		return ws.Config{}, fmt.Errorf("invalid --max-channel-bytes %d: must be positive", c.Int("max-channel-bytes"))
	}
	if ttl := c.Duration("presence-ttl"); ttl < time.Second {
		// Refreshed every third of it: below a second the refreshes alone
		// would keep the nodes busy.
		return ws.Config{}, fmt.Errorf("invalid --presence-ttl %s: at least 1s", ttl)
	}
	if c.Duration("shutdown-timeout") <= 0 {
		return ws.Config{}, fmt.Errorf("invalid --shutdown-timeout %s: must be positive", c.Duration("shutdown-timeout"))
	}
	secret, err := secretFlag(c, "jwt-secret", "jwt-secret-file")
	if err != nil {
		return ws.Config{}, err
	}
	cfg.JWTSecret = secret
	if path := c.String("jwt-public-key"); path != "" {
		b, err := os.ReadFile(path)
		if err != nil {
			return ws.Config{}, fmt.Errorf("--jwt-public-key: %w", err)
		}
		if cfg.JWTPublicKey, err = ws.ParsePublicKeyPEM(b); err != nil {
			return ws.Config{}, fmt.Errorf("--jwt-public-key %s: %w", path, err)
		}
	}
	for _, k := range c.StringSlice("api-key") {
		if k = strings.TrimSpace(k); k != "" {
			cfg.APIKeys = append(cfg.APIKeys, k)
		}
	}
	if path := c.String("api-key-file"); path != "" {
		b, err := os.ReadFile(path)
		if err != nil {
			return ws.Config{}, fmt.Errorf("--api-key-file: %w", err)
		}
		for _, line := range strings.Split(string(b), "\n") {
			if k := strings.TrimSpace(line); k != "" && !strings.HasPrefix(k, "#") {
				cfg.APIKeys = append(cfg.APIKeys, k)
			}
		}
	}
	if path := c.String("admin-password-file"); path != "" {
		b, err := os.ReadFile(path)
		if err != nil {
			return ws.Config{}, fmt.Errorf("--admin-password-file: %w", err)
		}
		if b = []byte(strings.TrimRight(string(b), "\r\n")); len(strings.TrimSpace(string(b))) == 0 {
			return ws.Config{}, fmt.Errorf("the admin password is empty: --admin-password-file %s holds no password", path)
		}
		cfg.AdminPassword = b
	}
	if d := c.Duration("admin-session-ttl"); d <= 0 {
		return ws.Config{}, fmt.Errorf("invalid --admin-session-ttl %s: must be positive", d)
	}
	cfg.AdminSessionTTL = c.Duration("admin-session-ttl")
	// Secrets given as flag values are on the command line, which every
	// user of the machine can read (ps, /proc/PID/cmdline).
	if v := c.String("jwt-secret"); v != "" && v != os.Getenv("PUBMESH_JWT_SECRET") {
		log.Warn("--jwt-secret is on the command line, visible to every user of this machine (ps): use --jwt-secret-file or PUBMESH_JWT_SECRET")
	}
	if len(c.StringSlice("api-key")) > 0 && os.Getenv("PUBMESH_API_KEY") == "" {
		log.Warn("--api-key is on the command line, visible to every user of this machine (ps): use --api-key-file or PUBMESH_API_KEY")
	}
	if len(cfg.JWTSecret) == 0 && cfg.JWTPublicKey == nil && len(cfg.APIKeys) == 0 && !cfg.Insecure {
		return ws.Config{}, errors.New("no authentication configured: give --jwt-secret, --jwt-public-key or --api-key " +
			"(or --insecure to let anyone who reaches the port subscribe and publish to every channel)")
	}
	return cfg, nil
}

// secretFlag reads a secret from --name or --fileFlag (not both). It
// returns nil when neither is given, and an error for an empty or blank
// secret: an empty HMAC key lets anyone sign tokens.
func secretFlag(c *cli.Context, name, fileFlag string) ([]byte, error) {
	s, path := c.String(name), c.String(fileFlag)
	if s != "" && path != "" {
		return nil, fmt.Errorf("give --%s or --%s, not both", name, fileFlag)
	}
	if path == "" {
		if !c.IsSet(name) {
			return nil, nil // absent: no secret, never an empty one
		}
		if strings.TrimSpace(s) == "" {
			return nil, fmt.Errorf("the JWT secret is empty (--%s or its environment variable is set to %q): give a secret, or leave it unset", name, s)
		}
		return []byte(s), nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("--%s: %w", fileFlag, err)
	}
	b = []byte(strings.TrimRight(string(b), "\r\n"))
	if len(strings.TrimSpace(string(b))) == 0 {
		return nil, fmt.Errorf("the JWT secret is empty: --%s %s holds no secret", fileFlag, path)
	}
	return b, nil
}

func runGateway(c *cli.Context) error {
	// Catch signals from the start, so an early one still ends cleanly.
	ctx, stopSignals := signal.NotifyContext(c.Context, syscall.SIGINT, syscall.SIGTERM)
	defer stopSignals()
	if c.Args().Present() {
		return usageError{fmt.Errorf("unexpected argument %q (see pubmesh gateway --help)", c.Args().First())}
	}
	log, err := newLogger(c)
	if err != nil {
		return usageError{err}
	}
	cfg, err := gatewayConfig(c, log)
	if err != nil {
		return usageError{err}
	}
	if r := c.Int("replicas"); r < 1 || r > 8 {
		return usageError{fmt.Errorf("invalid --replicas %d: want 1-8", r)}
	}
	if err := discovery.ValidID(c.String("cluster")); err != nil {
		return usageError{fmt.Errorf("invalid --cluster: %w", err)}
	}
	setup := gatewaySetup{
		Cluster:   c.String("cluster"),
		Listen:    c.String("listen"),
		PublicURL: c.String("public-url"),
		Replicas:  c.Int("replicas"),
		WS:        cfg,
		Log:       log,
	}
	var fc fanout.Config
	if err := setFanoutSecurity(c, log, &fc); err != nil {
		return err
	}
	setup.Etcd, setup.RedisUser, setup.RedisPassword, setup.RedisTLS = fc.Etcd, fc.Username, fc.Password, fc.TLS
	if cert, key := c.String("tls-cert"), c.String("tls-key"); cert != "" || key != "" {
		if cert == "" || key == "" {
			return usageError{errors.New("--tls-cert and --tls-key go together")}
		}
		pair, err := loadKeyPair(log, cert, key)
		if err != nil {
			return fmt.Errorf("--tls-cert: %w", err)
		}
		setup.TLS = &tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12}
	}
	tp, stopTracing, err := startTracing(c, "pubmesh-gateway", log)
	if err != nil {
		return err
	}
	defer stopTracing() // after stopGateway: the last spans are flushed
	setup.WS.TracerProvider = tp.TracerProvider()
	url, stopGateway, err := startGateway(ctx, setup)
	if err != nil {
		return err
	}
	fmt.Fprintf(c.App.Writer, "gateway: %s  (cluster %q)\n", url, c.String("cluster"))
	<-ctx.Done()
	// A second signal now ends the process at once.
	stopSignals()
	fmt.Fprintln(c.App.Writer, "gateway: shutting down (closing clients with 1001)")
	return stopGateway()
}

// gatewaySetup says how startGateway builds a gateway.
type gatewaySetup struct {
	// Etcd is how to reach etcd, unless EtcdClient is set (then used, not
	// closed).
	Etcd       discovery.EtcdConfig
	EtcdClient *clientv3.Client
	Cluster    string
	Listen     string // host:port
	PublicURL  string // as registered; default: ws.GatewayConfig's
	Replicas   int    // default 1
	// TLS, if set, serves HTTPS and WSS. Default: plain HTTP.
	TLS *tls.Config
	// RedisUser, RedisPassword and RedisTLS are the fanout client's
	// credentials and TLS for the nodes (fanout.Config's Username,
	// Password and TLS).
	RedisUser, RedisPassword string
	RedisTLS                 *tls.Config
	WS                       ws.Config
	Log                      *slog.Logger
	// Metrics receives the gateway's and its fanout client's metrics,
	// served at /metrics. Default: a new registry with Go and process
	// metrics.
	Metrics *prometheus.Registry
}

// startGateway starts the gateway s describes (ws.StartGateway, as the
// tests and the benchmark do) and returns its URL once it listens. stop
// closes every client with 1001 (within s.WS.ShutdownTimeout), then the
// fanout client; it is for `pubmesh gateway` and `pubmesh dev
// --gateway-listen`.
func startGateway(ctx context.Context, s gatewaySetup) (url string, stop func() error, err error) {
	if s.Log == nil {
		s.Log = slog.Default()
	}
	if s.Metrics == nil {
		s.Metrics = newMetricsRegistry()
	}
	s.WS.Metrics = s.Metrics
	if s.WS.Logger == nil {
		s.WS.Logger = s.Log
	}
	g, err := ws.StartGateway(ctx, ws.GatewayConfig{
		Fanout: fanout.Config{
			Etcd:       s.Etcd,
			EtcdClient: s.EtcdClient,
			Cluster:    s.Cluster,
			ID:         "gateway-" + hostPID(),
			Role:       "gateway",
			Replicas:   s.Replicas,
			Username:   s.RedisUser,
			Password:   s.RedisPassword,
			TLS:        s.RedisTLS,
			Logger:     s.Log,
			Registerer: s.Metrics,
		},
		Handler:   s.WS,
		Listen:    s.Listen,
		TLS:       s.TLS,
		PublicURL: s.PublicURL,
	})
	if err != nil {
		return "", nil, err
	}
	return g.URL(), g.Close, nil
}
