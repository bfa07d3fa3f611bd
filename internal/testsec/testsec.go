// Package testsec holds what the security tests share: TLS client settings
// and expired certificates from the files internal/devcerts writes, and
// checks that no secret leaks into a file, a command line or etcd. Each
// helper fails the test on any error.
package testsec

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/pubmesh/pubmesh/internal/devcerts"
)

// Pool is the CA certificates of the PEM file ca.
func Pool(tb testing.TB, ca string) *x509.CertPool {
	tb.Helper()
	b, err := os.ReadFile(ca)
	if err != nil {
		tb.Fatal(err)
	}
	p := x509.NewCertPool()
	if !p.AppendCertsFromPEM(b) {
		tb.Fatalf("testtls: %s holds no PEM certificate", ca)
	}
	return p
}

// Client trusts the CA of the PEM file ca and presents cert, unless cert is
// the zero Pair (no client certificate).
func Client(tb testing.TB, ca string, cert devcerts.Pair) *tls.Config {
	tb.Helper()
	tc := &tls.Config{RootCAs: Pool(tb, ca)}
	if cert.Cert != "" {
		pair, err := tls.LoadX509KeyPair(cert.Cert, cert.Key)
		if err != nil {
			tb.Fatal(err)
		}
		tc.Certificates = []tls.Certificate{pair}
	}
	return tc
}

// Expired writes a certificate for usage (devcerts.Server certificates are
// for devcerts.DefaultHosts), signed by the CA of set, that expired an hour
// ago, and returns its files.
func Expired(tb testing.TB, set devcerts.Set, usage devcerts.Usage) devcerts.Pair {
	tb.Helper()
	ca, err := devcerts.LoadCA(set.CA, set.CAKey)
	if err != nil {
		tb.Fatal(err)
	}
	var hosts []string
	if usage == devcerts.Server {
		hosts = devcerts.DefaultHosts
	}
	cert, key, err := ca.Issue("expired", usage, hosts, time.Now().Add(-48*time.Hour), time.Now().Add(-time.Hour))
	if err != nil {
		tb.Fatal(err)
	}
	dir := tb.TempDir()
	p := devcerts.Pair{Cert: filepath.Join(dir, "expired.crt"), Key: filepath.Join(dir, "expired.key")}
	if err := devcerts.WritePair(p, cert, key); err != nil {
		tb.Fatal(err)
	}
	return p
}

// NoSecrets fails the test (without printing them) if any non-empty secret
// is in s; where names what s is.
func NoSecrets(tb testing.TB, where, s string, secrets ...string) {
	tb.Helper()
	for _, sec := range secrets {
		if sec != "" && strings.Contains(s, sec) {
			tb.Errorf("%s holds a secret", where)
		}
	}
}

// EtcdValues is every key and value under prefix, a line "key=value" each;
// it fails the test if there is none.
func EtcdValues(tb testing.TB, cli *clientv3.Client, prefix string) string {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := cli.Get(ctx, prefix, clientv3.WithPrefix())
	if err != nil {
		tb.Fatal(err)
	}
	if len(resp.Kvs) == 0 {
		tb.Fatalf("no keys under %s in etcd", prefix)
	}
	var b strings.Builder
	for _, kv := range resp.Kvs {
		fmt.Fprintf(&b, "%s=%s\n", kv.Key, kv.Value)
	}
	return b.String()
}
