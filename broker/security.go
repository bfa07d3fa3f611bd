package broker

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// This file is the node's security: the ACL and TLS lines of redis.conf,
// the checks of the configuration, and how the agent itself connects to its
// Redis (AUTH, and TLS pinned to the node's own certificate).

// pubsubOnly are the permissions of a named ACL user (Config.Username),
// and presence (docs/presence.md) on the presence keys (~pm:p*):
// pub/sub on every channel, the connection commands go-redis sends, the INFO
// and CLIENT LIST the agent reads, and history (docs/history.md) on the
// history keys only (~pm:h*: the streams pm:h:<channel> and
// pm:ha:<run>:<channel>, and the sets pm:hx:<channel>): the publish script
// (EVALSHA, EVAL, SCRIPT LOAD/EXISTS; a script's own commands are checked
// against this same ACL, so it can touch nothing else), reading streams,
// their TTLs and the adopted-stream sets, and the writes of a drain's
// hand-off, which another node's agent makes as this user (XADD with the
// original ids, PEXPIRE, SADD). No other key, no SCAN or KEYS, no CONFIG,
// no admin commands: a service that holds the password can publish,
// subscribe and read history, nothing else.
const pubsubOnly = "resetchannels &* resetkeys ~pm:h* ~pm:p* -@all +@pubsub +ping +echo +hello +auth +quit +reset +info " +
	"+client|list +client|setname +client|getname +client|id " +
	historyCommands + " " + presenceCommands

// presenceCommands are what the presence scripts (fanout/presence.go)
// run, on the presence keys only (~pm:p*: pm:pm:, pm:pi:, pm:pu:
// <channel>).
const presenceCommands = "+zadd +zrem +zrange +zrangebyscore +zcard +hget +hset +hdel +hincrby +hgetall +hlen +exists"

// historyCommands are the history commands of pubsubOnly.
const historyCommands = "+evalsha +eval +script|load +script|exists " +
	"+xadd +xrange +xrevrange +xinfo|stream +pexpire +pttl +smembers +sscan +sadd"

var userPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// agentUser is the ACL user through which the agent sets the cluster
// configuration's limits (CONFIG SET) on a child whose clients use a named
// user (Config.Username), who may not. Its password is made at random by
// each Run and lives only in the agent's memory (redis.conf holds its hash).
const agentUser = "pubmesh-agent"

// agentOnly are agentUser's permissions: CONFIG SET, the connection
// commands, and what a drain's hand-off reads from this node (SCAN for the
// history streams, XRANGE, PTTL on ~pm:h*); no other key, no channels. SCAN
// lists key names whatever the key pattern, which is why the clients' user
// does not have it. The hand-off writes to the other nodes as the clients'
// user: their agents' passwords are their own.
const agentOnly = "resetchannels resetkeys ~pm:h* -@all +config|set +ping +auth +hello +quit +scan +xrange +pttl"

// tls reports whether the node serves TLS.
func (c Config) tls() bool { return c.TLSCertFile != "" }

// validateSecurity checks the credentials and TLS files, and refuses a
// node that anyone on the network could use.
func (c Config) validateSecurity() error {
	if c.Username != "" {
		if !userPattern.MatchString(c.Username) {
			return fmt.Errorf("broker: invalid Redis user %q: want 1-64 of [A-Za-z0-9._-]", c.Username)
		}
		if c.Password == "" {
			return fmt.Errorf("broker: Redis user %q needs a password", c.Username)
		}
		if c.Username == agentUser && c.Attach == "" {
			return fmt.Errorf("broker: Redis user %q is the agent's own; pick another", c.Username)
		}
	}
	for _, p := range append([]string{c.Password}, c.ExtraPasswords...) {
		if strings.ContainsAny(p, "\r\n\x00") {
			return errors.New("broker: a Redis password must not contain a line break or NUL")
		}
	}
	if len(c.ExtraPasswords) > 0 && c.Password == "" {
		return errors.New("broker: extra Redis passwords without a password")
	}
	if c.Attach == "" && !isLoopback(c.Bind) && c.Password == "" && !c.Insecure {
		return fmt.Errorf("broker: refusing to serve Redis on %s without a password: anyone who can reach port %d could read and publish every message. "+
			"Set --redis-password-file (or PUBMESH_REDIS_PASSWORD), bind 127.0.0.1, or pass --insecure", c.Bind, c.Port)
	}
	if (c.TLSCertFile == "") != (c.TLSKeyFile == "") {
		return errors.New("broker: TLS needs both a certificate and a key file (--tls-cert and --tls-key)")
	}
	if c.TLSClientCAFile != "" && !c.tls() {
		return errors.New("broker: a client CA (--tls-client-ca) needs --tls-cert and --tls-key")
	}
	if !c.tls() {
		return nil
	}
	if c.Attach != "" {
		return errors.New("broker: TLS options configure the redis-server the agent starts; they cannot be used with --attach")
	}
	pair, err := tls.LoadX509KeyPair(c.TLSCertFile, c.TLSKeyFile)
	if err != nil {
		return fmt.Errorf("broker: TLS certificate %s / key %s: %w", c.TLSCertFile, c.TLSKeyFile, err)
	}
	leaf := pair.Leaf
	if now := time.Now(); now.After(leaf.NotAfter) || now.Before(leaf.NotBefore) {
		return fmt.Errorf("broker: TLS certificate %s is valid from %s to %s, not now", c.TLSCertFile,
			leaf.NotBefore.UTC().Format(time.RFC3339), leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	if c.TLSClientCAFile == "" {
		return nil
	}
	pool, err := loadCAs(c.TLSClientCAFile)
	if err != nil {
		return fmt.Errorf("broker: client CA: %w", err)
	}
	// The agent's health checks present the node's certificate as a client
	// certificate: Redis must accept it.
	inter := x509.NewCertPool()
	for _, der := range pair.Certificate[1:] {
		if ic, err := x509.ParseCertificate(der); err == nil {
			inter.AddCert(ic)
		}
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		return fmt.Errorf("broker: with a client CA the agent's health checks present the node's certificate %s, "+
			"so it must be signed by %s and allow client authentication (extendedKeyUsage clientAuth): %w", c.TLSCertFile, c.TLSClientCAFile, err)
	}
	return nil
}

// loadCAs reads a PEM file of CA certificates.
func loadCAs(path string) (*x509.CertPool, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("%s: no PEM certificate", path)
	}
	return pool, nil
}

// writeSecurityConf writes the ACL and TLS lines of redis.conf. Passwords
// appear only as SHA-256 hashes (#<hex>), so the file holds no secret but
// the TLS key's path. agentPass, if set, is agentUser's password.
func writeSecurityConf(b *bytes.Buffer, c Config, agentPass string) error {
	if c.Password != "" {
		var hashes []string
		for _, p := range append([]string{c.Password}, c.ExtraPasswords...) {
			hashes = append(hashes, passwordHash(p))
		}
		hashes = slices.Compact(hashes)
		b.WriteString("# Clients authenticate (AUTH/HELLO); only password hashes are stored here.\n")
		if c.Username == "" {
			fmt.Fprintf(b, "user default on resetpass %s ~* &* +@all\n", strings.Join(hashes, " "))
		} else {
			b.WriteString("user default off resetpass\n")
			fmt.Fprintf(b, "user %s on resetpass %s %s\n", c.Username, strings.Join(hashes, " "), pubsubOnly)
		}
	}
	if agentPass != "" {
		b.WriteString("# The agent applies the cluster configuration's limits as this user; its password lives only in the agent's memory.\n")
		fmt.Fprintf(b, "user %s on resetpass %s %s\n", agentUser, passwordHash(agentPass), agentOnly)
	}
	if !c.tls() {
		fmt.Fprintf(b, "port %d\n", c.Port)
		return nil
	}
	cert, err1 := filepath.Abs(c.TLSCertFile)
	key, err2 := filepath.Abs(c.TLSKeyFile)
	if err := errors.Join(err1, err2); err != nil {
		return fmt.Errorf("broker: %w", err)
	}
	b.WriteString("# TLS only: no plain TCP port.\n")
	b.WriteString("port 0\n")
	fmt.Fprintf(b, "tls-port %d\n", c.Port)
	fmt.Fprintf(b, "tls-cert-file %s\n", quoteConf(cert))
	fmt.Fprintf(b, "tls-key-file %s\n", quoteConf(key))
	if c.TLSClientCAFile != "" {
		ca, err := filepath.Abs(c.TLSClientCAFile)
		if err != nil {
			return fmt.Errorf("broker: %w", err)
		}
		fmt.Fprintf(b, "tls-ca-cert-file %s\n", quoteConf(ca))
		b.WriteString("tls-auth-clients yes\n")
	} else {
		b.WriteString("tls-auth-clients no\n")
	}
	return nil
}

// clientTLS is how the agent itself (health checks, drain handshake)
// connects to its own TLS Redis: it accepts exactly the node's certificate,
// as it is in TLSCertFile now or was when the child started (pinned), and
// presents it as a client certificate when the node wants one. It is nil
// without TLS.
func (c Config) clientTLS(started []byte) *tls.Config {
	if !c.tls() {
		return nil
	}
	certFile := c.TLSCertFile
	tc := &tls.Config{
		MinVersion: tls.VersionTLS12,
		// The chain is checked below against the node's own certificate,
		// which is stronger than a CA check for a connection to ourselves.
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("redis: TLS: no server certificate")
			}
			got := cs.PeerCertificates[0].Raw
			if started != nil && bytes.Equal(got, started) {
				return nil
			}
			if now, err := leafDER(certFile); err == nil && bytes.Equal(got, now) {
				return nil
			}
			return fmt.Errorf("redis: TLS: the server's certificate is not the node's own (%s)", certFile)
		},
	}
	if c.TLSClientCAFile != "" {
		keyFile := c.TLSKeyFile
		tc.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			pair, err := tls.LoadX509KeyPair(certFile, keyFile)
			if err != nil {
				return nil, fmt.Errorf("redis: TLS client certificate: %w", err)
			}
			return &pair, nil
		}
	}
	return tc
}

// peerTLS is how the agent connects to the other nodes (a drain's history
// hand-off): Config.PeerTLS, or derived from the node's own TLS settings
// (see Config.PeerTLS). nil: plain TCP.
func (c Config) peerTLS() (*tls.Config, error) {
	if c.PeerTLS != nil {
		return c.PeerTLS.Clone(), nil
	}
	if !c.tls() {
		return nil, nil
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if c.TLSClientCAFile == "" {
		return tc, nil
	}
	pool, err := loadCAs(c.TLSClientCAFile)
	if err != nil {
		return nil, fmt.Errorf("broker: client CA: %w", err)
	}
	tc.RootCAs = pool
	certFile, keyFile := c.TLSCertFile, c.TLSKeyFile
	tc.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
		pair, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, fmt.Errorf("redis: TLS client certificate: %w", err)
		}
		return &pair, nil
	}
	return tc, nil
}

// passwordHash is how redis.conf holds a password: #<hex SHA-256>.
func passwordHash(p string) string {
	sum := sha256.Sum256([]byte(p))
	return "#" + hex.EncodeToString(sum[:])
}

// agentPassword is a new random password for agentUser.
func agentPassword() (string, error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("broker: agent password: %w", err)
	}
	return hex.EncodeToString(b), nil
}

// leafDER reads the first certificate of a PEM file.
func leafDER(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			return nil, fmt.Errorf("%s: no PEM certificate", path)
		}
		if blk.Type == "CERTIFICATE" {
			return blk.Bytes, nil
		}
	}
}

// redisOptions are the go-redis options of the agent's own connections to
// its Redis (the drain handshake's CLIENT LIST).
func (c Config) redisOptions(addr string) *redis.Options {
	return &redis.Options{
		Addr:            addr,
		Username:        c.Username,
		Password:        c.Password,
		TLSConfig:       c.clientTLS(nil),
		DisableIdentity: true,
		MaxRetries:      -1,
	}
}

// childEnv is the agent's environment without the variables that may hold
// secrets, for the redis-server child.
func childEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "PUBMESH_") && (strings.Contains(k, "PASSWORD") || strings.Contains(k, "SECRET") || strings.Contains(k, "KEY")) {
			continue
		}
		env = append(env, kv)
	}
	return env
}
