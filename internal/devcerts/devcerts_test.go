package devcerts_test

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pubmesh/pubmesh/internal/devcerts"
)

func TestGenerateWritesAChainForEveryRole(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "tls")
	s, err := devcerts.Generate(dir, devcerts.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(dir); err != nil || st.Mode().Perm() != 0o700 {
		t.Fatalf("dir mode: %v %v", st.Mode(), err)
	}
	for _, key := range []string{s.CAKey, s.Etcd.Key, s.Redis.Key, s.Gateway.Key, s.Client.Key} {
		st, err := os.Stat(key)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %v, want 0600", key, st.Mode().Perm())
		}
	}
	pool := x509.NewCertPool()
	caPEM, _ := os.ReadFile(s.CA)
	if !pool.AppendCertsFromPEM(caPEM) {
		t.Fatal("ca.crt holds no certificate")
	}
	for _, srv := range []devcerts.Pair{s.Etcd, s.Redis, s.Gateway} {
		leaf := load(t, srv)
		for _, host := range devcerts.DefaultHosts {
			if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, DNSName: host}); err != nil {
				t.Errorf("%s for %s: %v", srv.Cert, host, err)
			}
		}
		// Server certificates also authenticate clients (the agent's probe,
		// etcd peers).
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
			t.Errorf("%s as a client: %v", srv.Cert, err)
		}
	}
	client := load(t, s.Client)
	if _, err := client.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("client certificate: %v", err)
	}
	if _, err := client.Verify(x509.VerifyOptions{Roots: pool}); err == nil {
		t.Error("the client certificate verifies as a server certificate")
	}
}

// A real TLS handshake between the server and client certificates, with
// mutual authentication, and a refusal from a second, unrelated CA.
func TestHandshake(t *testing.T) {
	t.Parallel()
	s, err := devcerts.Generate(t.TempDir(), devcerts.Options{})
	if err != nil {
		t.Fatal(err)
	}
	other, err := devcerts.Generate(t.TempDir(), devcerts.Options{})
	if err != nil {
		t.Fatal(err)
	}
	srvPair, _ := tls.LoadX509KeyPair(s.Redis.Cert, s.Redis.Key)
	l, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
		Certificates: []tls.Certificate{srvPair}, ClientCAs: roots(t, s.CA), ClientAuth: tls.RequireAndVerifyClientCert,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.Write([]byte("ok"))
			}()
		}
	}()
	dial := func(ca string, cert devcerts.Pair) error {
		pair, _ := tls.LoadX509KeyPair(cert.Cert, cert.Key)
		c, err := tls.Dial("tcp", l.Addr().String(), &tls.Config{RootCAs: roots(t, ca), Certificates: []tls.Certificate{pair}})
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = c.Read(make([]byte, 2))
		return err
	}
	if err := dial(s.CA, s.Client); err != nil {
		t.Fatalf("handshake: %v", err)
	}
	if err := dial(other.CA, s.Client); err == nil || !strings.Contains(err.Error(), "unknown authority") {
		t.Errorf("other CA: %v, want unknown authority", err)
	}
	if err := dial(s.CA, other.Client); err == nil {
		t.Error("a client certificate of another CA was accepted")
	}
}

func TestEnsureReusesThenRenews(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s, fresh, err := devcerts.Ensure(dir, devcerts.Options{})
	if err != nil || !fresh {
		t.Fatalf("first Ensure: fresh %v, %v", fresh, err)
	}
	before, _ := os.ReadFile(s.CA)
	if _, fresh, err := devcerts.Ensure(dir, devcerts.Options{}); err != nil || fresh {
		t.Fatalf("second Ensure: fresh %v, %v (want the same set)", fresh, err)
	}
	if after, _ := os.ReadFile(s.CA); string(after) != string(before) {
		t.Fatal("CA changed although the set was valid")
	}
	// A set that expires within RenewBefore is made again.
	if _, fresh, err := devcerts.Ensure(dir, devcerts.Options{RenewBefore: 1000 * 24 * time.Hour}); err != nil || !fresh {
		t.Fatalf("Ensure near expiry: fresh %v, %v", fresh, err)
	}
	// So is a set with a missing file.
	os.Remove(s.Client.Key)
	if _, fresh, err := devcerts.Ensure(dir, devcerts.Options{}); err != nil || !fresh {
		t.Fatalf("Ensure with a missing key: fresh %v, %v", fresh, err)
	}
}

func TestIssueExpired(t *testing.T) {
	t.Parallel()
	ca, err := devcerts.NewCA("test CA", time.Now().Add(-48*time.Hour), time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	certPEM, _, err := ca.Issue("old", devcerts.Client, nil, time.Now().Add(-48*time.Hour), time.Now().Add(-24*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(certPEM)
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	_, err = c.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	var inv x509.CertificateInvalidError
	if !errors.As(err, &inv) || inv.Reason != x509.Expired {
		t.Fatalf("verify an expired certificate: %v", err)
	}
}

func load(t *testing.T, p devcerts.Pair) *x509.Certificate {
	t.Helper()
	pair, err := tls.LoadX509KeyPair(p.Cert, p.Key)
	if err != nil {
		t.Fatal(err)
	}
	return pair.Leaf
}

func roots(t *testing.T, ca string) *x509.CertPool {
	t.Helper()
	b, err := os.ReadFile(ca)
	if err != nil {
		t.Fatal(err)
	}
	p := x509.NewCertPool()
	p.AppendCertsFromPEM(b)
	return p
}
