//go:build devtools

package main

import (
	"crypto/rand"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/pubmesh/pubmesh/discovery"
	"github.com/pubmesh/pubmesh/internal/devcerts"
	"github.com/pubmesh/pubmesh/internal/embedetcd"
	"github.com/pubmesh/pubmesh/ws"
)

// devSecurity is what `pubmesh dev --secure` uses: a CA and certificates
// in DIR/tls, passwords in DIR/secrets (mode 0600), and DIR/env.sh, which
// points the other commands at all of it. Everything is reused from an
// earlier run with the same --data-dir (certificates while they have a week
// left), so a shell that sourced env.sh keeps working.
type devSecurity struct {
	certs             devcerts.Set
	etcdPassword      string
	redisPassword     string
	etcdPasswordFile  string
	redisPasswordFile string
	jwtSecret         string
	jwtSecretFile     string
	envFile           string
}

// setupDevSecurity makes or reuses the certificates and passwords in dir.
// redisPassword, if set, is used instead of a generated one.
func setupDevSecurity(dir, redisPassword string) (*devSecurity, error) {
	certs, _, err := devcerts.Ensure(filepath.Join(dir, "tls"), devcerts.Options{})
	if err != nil {
		return nil, err
	}
	secrets := filepath.Join(dir, "secrets")
	if err := os.MkdirAll(secrets, 0o700); err != nil {
		return nil, err
	}
	s := &devSecurity{
		certs:             certs,
		etcdPasswordFile:  filepath.Join(secrets, "etcd-password"),
		redisPasswordFile: filepath.Join(secrets, "redis-password"),
		jwtSecretFile:     filepath.Join(secrets, "jwt-secret"),
		envFile:           filepath.Join(dir, "env.sh"),
	}
	if s.jwtSecret, err = secretFile(s.jwtSecretFile, ""); err != nil {
		return nil, err
	}
	if s.etcdPassword, err = secretFile(s.etcdPasswordFile, ""); err != nil {
		return nil, err
	}
	if s.redisPassword, err = secretFile(s.redisPasswordFile, redisPassword); err != nil {
		return nil, err
	}
	return s, nil
}

// secretFile returns the password in path: want if set (written there),
// else the file's first line, else a new random one (written there). The
// file has mode 0600.
func secretFile(path, want string) (string, error) {
	if want == "" {
		b, err := os.ReadFile(path)
		if err == nil {
			if first, _, _ := strings.Cut(string(b), "\n"); strings.TrimSpace(first) != "" {
				return strings.TrimRight(first, "\r"), os.Chmod(path, 0o600)
			}
		} else if !errors.Is(err, fs.ErrNotExist) {
			return "", err
		}
		raw := make([]byte, 24)
		rand.Read(raw)
		want = base64.RawURLEncoding.EncodeToString(raw)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return "", err
	}
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return "", err
	}
	if _, err := fmt.Fprintln(f, want); err != nil {
		f.Close()
		return "", err
	}
	return want, f.Close()
}

// etcdTLS is the embedded etcd's server configuration: mutual TLS with the
// dev CA.
func (s *devSecurity) etcdTLS() *embedetcd.TLS {
	return &embedetcd.TLS{CertFile: s.certs.Etcd.Cert, KeyFile: s.certs.Etcd.Key, ClientCAFile: s.certs.CA}
}

// etcdClient is how dev's own agents reach the embedded etcd.
func (s *devSecurity) etcdClient(log *slog.Logger, endpoint string) (discovery.EtcdConfig, error) {
	tc, err := clientTLS(log, "etcd", s.certs.CA, s.certs.Client.Cert, s.certs.Client.Key)
	if err != nil {
		return discovery.EtcdConfig{}, err
	}
	return discovery.EtcdConfig{
		Endpoints: []string{endpoint}, DialTimeout: 10 * time.Second, TLS: tc,
		Username: "root", Password: s.etcdPassword,
	}, nil
}

// gateway is the dev gateway's security: HTTPS/WSS with the gateway
// certificate, mutual TLS to the nodes, and JWTs signed with the generated
// secret (`pubmesh token` finds it through env.sh).
func (s *devSecurity) gateway(log *slog.Logger) (server, redis *tls.Config, cfg ws.Config, err error) {
	pair, err := loadKeyPair(log, s.certs.Gateway.Cert, s.certs.Gateway.Key)
	if err != nil {
		return nil, nil, ws.Config{}, err
	}
	server = &tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12}
	if redis, err = clientTLS(log, "redis", s.certs.CA, s.certs.Client.Cert, s.certs.Client.Key); err != nil {
		return nil, nil, ws.Config{}, err
	}
	return server, redis, ws.Config{JWTSecret: []byte(s.jwtSecret)}, nil
}

// writeEnv writes env.sh: the PUBMESH_* variables that make publish,
// subscribe, nodes, drain and node use this cluster. It holds paths, not
// secrets.
func (s *devSecurity) writeEnv(etcdEndpoint, cluster, redisUser, gateway string) error {
	var b strings.Builder
	b.WriteString("# Written by `pubmesh dev --secure`. Use the cluster from a shell with:\n")
	fmt.Fprintf(&b, "#   source %s\n", shellQuote(s.envFile))
	b.WriteString("# It holds file names only: the passwords are in the files named here (mode 0600).\n")
	set := func(k, v string) { fmt.Fprintf(&b, "export %s=%s\n", k, shellQuote(v)) }
	set("PUBMESH_ETCD", etcdEndpoint)
	set("PUBMESH_ETCD_CACERT", s.certs.CA)
	set("PUBMESH_ETCD_CERT", s.certs.Client.Cert)
	set("PUBMESH_ETCD_KEY", s.certs.Client.Key)
	set("PUBMESH_ETCD_USER", "root")
	set("PUBMESH_ETCD_PASSWORD_FILE", s.etcdPasswordFile)
	set("PUBMESH_CLUSTER", cluster)
	if redisUser != "" {
		set("PUBMESH_REDIS_USER", redisUser)
	}
	set("PUBMESH_REDIS_PASSWORD_FILE", s.redisPasswordFile)
	set("PUBMESH_REDIS_CACERT", s.certs.CA)
	set("PUBMESH_REDIS_CERT", s.certs.Client.Cert)
	set("PUBMESH_REDIS_KEY", s.certs.Client.Key)
	// For `pubmesh token` (the dev gateway verifies with this secret) and
	// for a `pubmesh gateway` of your own.
	set("PUBMESH_JWT_SECRET_FILE", s.jwtSecretFile)
	set("PUBMESH_GATEWAY_TLS_CERT", s.certs.Gateway.Cert)
	set("PUBMESH_GATEWAY_TLS_KEY", s.certs.Gateway.Key)
	if gateway != "" {
		fmt.Fprintf(&b, "# The dev gateway: https://%s/ (wss://%s/ws); browsers must trust %s.\n", gateway, gateway, s.certs.CA)
	}
	userArg := ""
	if redisUser != "" {
		userArg = " --user " + shellQuote(redisUser)
	}
	b.WriteString("# A node with redis-cli (it reads the password from REDISCLI_AUTH, not the command line):\n")
	fmt.Fprintf(&b, "#   REDISCLI_AUTH=\"$(head -n1 \"$PUBMESH_REDIS_PASSWORD_FILE\")\" redis-cli --tls --cacert \"$PUBMESH_REDIS_CACERT\" --cert \"$PUBMESH_REDIS_CERT\" --key \"$PUBMESH_REDIS_KEY\"%s -p PORT PING\n", userArg)
	if err := os.WriteFile(s.envFile, []byte(b.String()), 0o600); err != nil {
		return err
	}
	return os.Chmod(s.envFile, 0o600)
}

// shellQuote quotes s for a POSIX shell.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
