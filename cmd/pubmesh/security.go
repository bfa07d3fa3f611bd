package main

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/pubmesh/pubmesh/discovery"
	"github.com/pubmesh/pubmesh/fanout"
)

// Credentials and TLS. Secrets never come from a flag's value: a password
// is read from a file (--*-password-file) or an environment variable, so it
// never shows in `ps` (/proc/PID/cmdline is readable by every user; a
// process's environment only by its owner). docs/security.md has the whole
// picture.

const (
	envEtcdPassword  = "PUBMESH_ETCD_PASSWORD"
	envRedisPassword = "PUBMESH_REDIS_PASSWORD"
)

// etcdSecurityFlags are the TLS and auth flags of every command that talks
// to etcd, named like etcdctl's (--cacert, --cert, --key, --user) with an
// etcd- prefix.
func etcdSecurityFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{
			Name:        "etcd-cacert",
			Usage:       "verify etcd's TLS certificate with this CA bundle (PEM); endpoints without a scheme then use https://",
			DefaultText: "none: plain http, or the system's CAs for https:// endpoints",
			EnvVars:     []string{"PUBMESH_ETCD_CACERT"},
		},
		&cli.StringFlag{
			Name:        "etcd-cert",
			Usage:       "client certificate (PEM) for etcd's mutual TLS; needs --etcd-key",
			DefaultText: "none",
			EnvVars:     []string{"PUBMESH_ETCD_CERT"},
		},
		&cli.StringFlag{
			Name:        "etcd-key",
			Usage:       "private key (PEM) of --etcd-cert",
			DefaultText: "none",
			EnvVars:     []string{"PUBMESH_ETCD_KEY"},
		},
		&cli.StringFlag{
			Name:        "etcd-user",
			Usage:       "etcd user name; the password comes from --etcd-password-file or " + envEtcdPassword,
			DefaultText: "none: no etcd authentication",
			EnvVars:     []string{"PUBMESH_ETCD_USER"},
		},
		&cli.StringFlag{
			Name:        "etcd-password-file",
			Usage:       "file whose first line is the etcd user's password (else the variable " + envEtcdPassword + ")",
			DefaultText: "none",
			EnvVars:     []string{"PUBMESH_ETCD_PASSWORD_FILE"},
		},
	}
}

// etcdConfig reads etcdFlags into a discovery.EtcdConfig.
func etcdConfig(c *cli.Context, log *slog.Logger) (discovery.EtcdConfig, error) {
	cfg := discovery.EtcdConfig{DialTimeout: c.Duration("etcd-timeout")}
	tc, err := clientTLS(log, "etcd", c.String("etcd-cacert"), c.String("etcd-cert"), c.String("etcd-key"))
	if err != nil {
		return cfg, err
	}
	cfg.TLS = tc
	cfg.Endpoints = parseEndpoints(c.String("etcd"), tc != nil)
	user := c.String("etcd-user")
	if strings.Contains(user, ":") {
		return cfg, usageError{fmt.Errorf("--etcd-user takes a user name only: put the password in --etcd-password-file or %s, never on the command line", envEtcdPassword)}
	}
	pw, err := readPasswords(log, "--etcd-password-file", c.String("etcd-password-file"), envEtcdPassword)
	if err != nil {
		return cfg, err
	}
	switch {
	case user != "" && len(pw) == 0:
		return cfg, usageError{fmt.Errorf("--etcd-user %s needs a password: --etcd-password-file or %s", user, envEtcdPassword)}
	case user == "" && len(pw) > 0:
		return cfg, usageError{errors.New("an etcd password needs --etcd-user")}
	case user != "":
		cfg.Username, cfg.Password = user, pw[0]
	}
	return cfg, nil
}

// parseEndpoints is discovery.ParseEndpoints, with https:// where a scheme
// is missing when TLS is configured.
func parseEndpoints(s string, secure bool) []string {
	if !secure {
		return discovery.ParseEndpoints(s)
	}
	var out []string
	for _, e := range strings.Split(s, ",") {
		if e = strings.TrimSpace(e); e == "" {
			continue
		}
		if !strings.Contains(e, "://") {
			e = "https://" + e
		}
		out = append(out, e)
	}
	return out
}

// redisAuthFlags are the Redis credentials: what a node agent configures
// its redis-server with, and what clients (publish, subscribe, gateway)
// authenticate with.
func redisAuthFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{
			Name:        "redis-user",
			Usage:       "Redis ACL user; on a node, the default user is then disabled and this one may only publish and subscribe",
			DefaultText: "none: the default user",
			EnvVars:     []string{"PUBMESH_REDIS_USER"},
		},
		&cli.StringFlag{
			Name: "redis-password-file",
			Usage: "file whose first line is the Redis password (else the variable " + envRedisPassword + "); " +
				"a node also accepts the passwords on further lines, for rotation",
			DefaultText: "none: no Redis authentication",
			EnvVars:     []string{"PUBMESH_REDIS_PASSWORD_FILE"},
		},
	}
}

// redisTLSFlags are how a client verifies TLS nodes and, for mutual TLS,
// which certificate it presents.
func redisTLSFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{
			Name:        "redis-cacert",
			Usage:       "CA bundle (PEM) that verifies the certificates of nodes registered with TLS",
			DefaultText: "the system's CAs",
			EnvVars:     []string{"PUBMESH_REDIS_CACERT"},
		},
		&cli.StringFlag{
			Name:        "redis-cert",
			Usage:       "client certificate (PEM) for nodes that require mutual TLS; needs --redis-key",
			DefaultText: "none",
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

// redisCredentials reads redisAuthFlags: the user and the passwords (the
// first is the one to use; a node accepts all). A user needs a password,
// unless generated is set (dev --secure makes one).
func redisCredentials(c *cli.Context, log *slog.Logger, generated bool) (user string, passwords []string, err error) {
	pw, err := readPasswords(log, "--redis-password-file", c.String("redis-password-file"), envRedisPassword)
	if err != nil {
		return "", nil, err
	}
	user = c.String("redis-user")
	if user != "" && len(pw) == 0 && !generated {
		return "", nil, usageError{fmt.Errorf("--redis-user %s needs a password: --redis-password-file or %s", user, envRedisPassword)}
	}
	return user, pw, nil
}

// readPasswords reads the non-empty lines of file, or else the value of
// the variable env. It warns when the file is readable by other users.
func readPasswords(log *slog.Logger, flag, file, env string) ([]string, error) {
	if file == "" {
		if v := os.Getenv(env); v != "" {
			return []string{strings.TrimRight(v, "\r\n")}, nil
		}
		return nil, nil
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", flag, err)
	}
	if st, err := os.Stat(file); err == nil && st.Mode().Perm()&0o077 != 0 {
		log.Warn("password file is readable by other users: chmod 600 it", "file", file, "mode", st.Mode().Perm().String())
	}
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		if l = strings.TrimRight(l, "\r"); l != "" {
			out = append(out, l)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s: %s is empty", flag, file)
	}
	return out, nil
}

// clientTLS builds a client TLS config from a CA bundle and a client
// certificate and key, or returns nil when none is given. what names the
// server in errors ("etcd", "redis").
func clientTLS(log *slog.Logger, what, caFile, certFile, keyFile string) (*tls.Config, error) {
	if caFile == "" && certFile == "" && keyFile == "" {
		return nil, nil
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if caFile != "" {
		b, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("--%s-cacert: %w", what, err)
		}
		tc.RootCAs = x509.NewCertPool()
		if !tc.RootCAs.AppendCertsFromPEM(b) {
			return nil, fmt.Errorf("--%s-cacert: %s holds no PEM certificate", what, caFile)
		}
	}
	if (certFile == "") != (keyFile == "") {
		return nil, usageError{fmt.Errorf("--%s-cert and --%s-key go together", what, what)}
	}
	if certFile != "" {
		pair, err := loadKeyPair(log, certFile, keyFile)
		if err != nil {
			return nil, fmt.Errorf("--%s-cert: %w", what, err)
		}
		tc.Certificates = []tls.Certificate{pair}
	}
	return tc, nil
}

// loadKeyPair loads a certificate and its key, refuses one that is not
// valid now, and warns about one that expires within a week.
func loadKeyPair(log *slog.Logger, certFile, keyFile string) (tls.Certificate, error) {
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return pair, err
	}
	now := time.Now()
	switch leaf := pair.Leaf; {
	case now.After(leaf.NotAfter):
		return pair, fmt.Errorf("certificate %s expired on %s", certFile, leaf.NotAfter.UTC().Format(time.RFC3339))
	case now.Before(leaf.NotBefore):
		return pair, fmt.Errorf("certificate %s is not valid before %s", certFile, leaf.NotBefore.UTC().Format(time.RFC3339))
	case leaf.NotAfter.Sub(now) < 7*24*time.Hour:
		log.Warn("certificate expires soon", "file", certFile, "not_after", leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	return pair, nil
}

// redisClientFlags are the Redis flags of a fanout client: credentials and
// TLS.
func redisClientFlags() []cli.Flag {
	return append(redisAuthFlags(), redisTLSFlags()...)
}

// setFanoutSecurity fills in cfg's etcd config and its Redis credentials
// and TLS from etcdFlags and redisClientFlags.
func setFanoutSecurity(c *cli.Context, log *slog.Logger, cfg *fanout.Config) error {
	ecfg, err := etcdConfig(c, log)
	if err != nil {
		return err
	}
	user, passwords, err := redisCredentials(c, log, false)
	if err != nil {
		return err
	}
	tc, err := clientTLS(log, "redis", c.String("redis-cacert"), c.String("redis-cert"), c.String("redis-key"))
	if err != nil {
		return err
	}
	cfg.Etcd, cfg.Username, cfg.TLS = ecfg, user, tc
	if len(passwords) > 0 {
		cfg.Password = passwords[0]
	}
	return nil
}
