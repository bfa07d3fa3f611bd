// Package devcerts makes a throwaway certificate authority and the
// certificates a local secure cluster needs (`pubmesh dev --secure` and the
// tests): one server certificate each for etcd, the Redis nodes and the
// gateway, and one client certificate, all for 127.0.0.1, ::1 and
// localhost. Keys are ECDSA P-256, generated with crypto/x509; key files are
// written with mode 0600.
//
// It is for development and tests only: the CA's key sits next to the
// certificates it signs.
package devcerts

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// DefaultHosts are the names every server certificate is valid for.
var DefaultHosts = []string{"127.0.0.1", "::1", "localhost"}

// Usage says what a certificate may be used for.
type Usage int

const (
	// Server certificates may authenticate a server and, like Redis's own
	// tls-client-cert-file default, also a client (a node agent's health
	// probe presents its node's certificate; etcd peers need both).
	Server Usage = iota
	// Client certificates may only authenticate a client.
	Client
)

// CA is a certificate authority that can issue certificates.
type CA struct {
	Cert    *x509.Certificate
	CertPEM []byte
	key     crypto.Signer
	keyPEM  []byte
}

// NewCA makes a self-signed CA valid from notBefore to notAfter.
func NewCA(name string, notBefore, notAfter time.Time) (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("devcerts: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: name, Organization: []string{"pubmesh dev"}},
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("devcerts: CA: %w", err)
	}
	cert, _ := x509.ParseCertificate(der)
	keyPEM, err := encodeKey(key)
	if err != nil {
		return nil, err
	}
	return &CA{Cert: cert, CertPEM: pemBlock("CERTIFICATE", der), key: key, keyPEM: keyPEM}, nil
}

// LoadCA reads a CA written by Generate (ca.crt and ca.key), to issue more
// certificates with it.
func LoadCA(certFile, keyFile string) (*CA, error) {
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("devcerts: %w", err)
	}
	key, ok := pair.PrivateKey.(crypto.Signer)
	if !ok || !pair.Leaf.IsCA {
		return nil, fmt.Errorf("devcerts: %s is not a CA with a signing key", certFile)
	}
	keyPEM, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, fmt.Errorf("devcerts: %w", err)
	}
	return &CA{Cert: pair.Leaf, CertPEM: pemBlock("CERTIFICATE", pair.Leaf.Raw), key: key, keyPEM: keyPEM}, nil
}

// Issue makes a certificate signed by the CA for name, valid for hosts (IP
// addresses or DNS names) from notBefore to notAfter. It returns the
// certificate and its private key, PEM-encoded.
func (ca *CA) Issue(name string, usage Usage, hosts []string, notBefore, notAfter time.Time) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("devcerts: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: name, Organization: []string{"pubmesh dev"}},
		NotBefore:    notBefore,
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if usage == Server {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, key.Public(), ca.key)
	if err != nil {
		return nil, nil, fmt.Errorf("devcerts: %s: %w", name, err)
	}
	if keyPEM, err = encodeKey(key); err != nil {
		return nil, nil, err
	}
	return pemBlock("CERTIFICATE", der), keyPEM, nil
}

// Pair is the paths of a certificate and its key.
type Pair struct{ Cert, Key string }

// Set is a CA and the certificates of a local cluster, as files.
type Set struct {
	Dir     string
	CA      string // ca.crt: what every client and server trusts
	CAKey   string // ca.key
	Etcd    Pair   // etcd's server (and peer) certificate
	Redis   Pair   // the Redis nodes' certificate
	Gateway Pair   // the gateway's HTTPS/WSS certificate
	Client  Pair   // a client certificate (CN "pubmesh-client"), for etcd and Redis mutual TLS
}

// Paths returns where the files of a Set in dir are (they may not exist).
func Paths(dir string) Set {
	p := func(n string) Pair {
		return Pair{Cert: filepath.Join(dir, n+".crt"), Key: filepath.Join(dir, n+".key")}
	}
	return Set{
		Dir: dir, CA: filepath.Join(dir, "ca.crt"), CAKey: filepath.Join(dir, "ca.key"),
		Etcd: p("etcd"), Redis: p("redis"), Gateway: p("gateway"), Client: p("client"),
	}
}

// Options of Generate and Ensure. Zero values mean the default.
type Options struct {
	// Hosts the server certificates are valid for. Default: DefaultHosts.
	Hosts []string
	// Validity of the certificates (the CA gets four times as long).
	// Default: 90 days.
	Validity time.Duration
	// RenewBefore: Ensure makes a new set when a certificate expires sooner
	// than this. Default: 7 days.
	RenewBefore time.Duration
	// Now is the start of the validity. Default: time.Now() (minus a
	// minute, for clock skew).
	Now time.Time
}

func (o Options) withDefaults() Options {
	if len(o.Hosts) == 0 {
		o.Hosts = DefaultHosts
	}
	if o.Validity <= 0 {
		o.Validity = 90 * 24 * time.Hour
	}
	if o.RenewBefore <= 0 {
		o.RenewBefore = 7 * 24 * time.Hour
	}
	if o.Now.IsZero() {
		o.Now = time.Now().Add(-time.Minute)
	}
	return o
}

// Generate makes a new CA and every certificate of a Set, and writes them
// into dir (created with mode 0700): keys with mode 0600, certificates 0644.
func Generate(dir string, opts Options) (Set, error) {
	o := opts.withDefaults()
	s := Paths(dir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return Set{}, fmt.Errorf("devcerts: %w", err)
	}
	ca, err := NewCA("pubmesh dev CA", o.Now, o.Now.Add(4*o.Validity))
	if err != nil {
		return Set{}, err
	}
	if err := writePair(Pair{s.CA, s.CAKey}, ca.CertPEM, ca.keyPEM); err != nil {
		return Set{}, err
	}
	for _, c := range []struct {
		name  string
		usage Usage
		pair  Pair
	}{
		{"pubmesh-etcd", Server, s.Etcd},
		{"pubmesh-redis", Server, s.Redis},
		{"pubmesh-gateway", Server, s.Gateway},
		{"pubmesh-client", Client, s.Client},
	} {
		hosts := o.Hosts
		if c.usage == Client {
			hosts = nil
		}
		cert, key, err := ca.Issue(c.name, c.usage, hosts, o.Now, o.Now.Add(o.Validity))
		if err != nil {
			return Set{}, err
		}
		if err := writePair(c.pair, cert, key); err != nil {
			return Set{}, err
		}
	}
	return s, nil
}

// Ensure returns the Set in dir if every file is there, every certificate
// was signed by its CA and none expires within opts.RenewBefore; otherwise
// it generates a new one. Reusing the set keeps clients that trust the CA
// working across restarts.
func Ensure(dir string, opts Options) (s Set, fresh bool, err error) {
	o := opts.withDefaults()
	if err := Check(dir, time.Now().Add(o.RenewBefore)); err == nil {
		return Paths(dir), false, nil
	}
	s, err = Generate(dir, opts)
	return s, err == nil, err
}

// Check verifies the Set in dir: every file present, every certificate
// signed by the CA and still valid at t.
func Check(dir string, t time.Time) error {
	s := Paths(dir)
	caCert, err := readCert(s.CA)
	if err != nil {
		return err
	}
	if _, err := os.Stat(s.CAKey); err != nil {
		return fmt.Errorf("devcerts: %w", err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(caCert)
	for _, p := range []Pair{s.Etcd, s.Redis, s.Gateway, s.Client} {
		c, err := readCert(p.Cert)
		if err != nil {
			return err
		}
		if _, err := os.Stat(p.Key); err != nil {
			return fmt.Errorf("devcerts: %w", err)
		}
		if _, err := c.Verify(x509.VerifyOptions{Roots: pool, CurrentTime: t, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
			return fmt.Errorf("devcerts: %s: %w", p.Cert, err)
		}
	}
	return nil
}

func readCert(path string) (*x509.Certificate, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("devcerts: %w", err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("devcerts: %s: no PEM certificate", path)
	}
	return x509.ParseCertificate(blk.Bytes)
}

// WritePair writes a certificate (mode 0644) and its key (mode 0600).
func WritePair(p Pair, certPEM, keyPEM []byte) error { return writePair(p, certPEM, keyPEM) }

func writePair(p Pair, certPEM, keyPEM []byte) error {
	return errors.Join(writeFile(p.Cert, certPEM, 0o644), writeFile(p.Key, keyPEM, 0o600))
}

// writeFile writes through a temporary file and a rename, so a reader never
// sees half a file and an existing file's wider mode is not kept.
func writeFile(path string, b []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".tmp-"+filepath.Base(path))
	if err != nil {
		return fmt.Errorf("devcerts: %w", err)
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return fmt.Errorf("devcerts: %w", err)
	}
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return fmt.Errorf("devcerts: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("devcerts: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("devcerts: %w", err)
	}
	return nil
}

func encodeKey(k *ecdsa.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, fmt.Errorf("devcerts: %w", err)
	}
	return pemBlock("PRIVATE KEY", der), nil
}

func pemBlock(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return n.Add(n, big.NewInt(1))
}
