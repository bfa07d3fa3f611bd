// Package testtls builds TLS client settings from the PEM files that
// internal/devcerts writes, for tests: each helper fails the test on any
// error, so a test states the CA and certificate it means in one call.
package testtls

import (
	"crypto/tls"
	"crypto/x509"
	"os"
	"path/filepath"
	"testing"
	"time"

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
