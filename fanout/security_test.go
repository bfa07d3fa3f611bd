package fanout_test

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pubmesh/pubmesh/broker"
	"github.com/pubmesh/pubmesh/discovery"
	"github.com/pubmesh/pubmesh/fanout"
	"github.com/pubmesh/pubmesh/internal/devcerts"
	"github.com/pubmesh/pubmesh/internal/embedetcd"
	"github.com/pubmesh/pubmesh/internal/freeport"
	"github.com/pubmesh/pubmesh/internal/testsec"
)

// The secure path end to end: etcd with mutual TLS and a root password, a
// node agent serving mutual TLS with a password, and fanout clients
// publishing and subscribing through both. Clients with a wrong password,
// a wrong CA, no TLS settings, no client certificate or an expired one are
// refused at once, with an error naming the node.
func TestSecureCluster(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	certs, err := devcerts.Generate(filepath.Join(dir, "tls"), devcerts.Options{})
	if err != nil {
		t.Fatal(err)
	}
	other, err := devcerts.Generate(filepath.Join(dir, "other"), devcerts.Options{})
	if err != nil {
		t.Fatal(err)
	}
	expired := testsec.Expired(t, certs, devcerts.Client)

	srv, err := embedetcd.Start(embedetcd.Config{
		TLS:          &embedetcd.TLS{CertFile: certs.Etcd.Cert, KeyFile: certs.Etcd.Key, ClientCAFile: certs.CA},
		RootPassword: "etcd-root-pw",
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	etcdCfg := discovery.EtcdConfig{
		Endpoints: []string{srv.Endpoint()}, TLS: testsec.Client(t, certs.CA, certs.Client),
		Username: "root", Password: "etcd-root-pw",
	}
	cli, err := discovery.Dial(context.Background(), etcdCfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	reg, err := discovery.New(cli, discovery.Config{Cluster: "secure"})
	if err != nil {
		t.Fatal(err)
	}

	const pw = "redis-pw-0c9a"
	var a *broker.Agent
	err = freeport.Use(func(port int) (err error) {
		a, err = broker.New(broker.Config{
			Registry: reg, ID: "n1", Port: port, DataDir: t.TempDir(),
			Password: pw, TLSCertFile: certs.Redis.Cert, TLSKeyFile: certs.Redis.Key, TLSClientCAFile: certs.CA,
			// TLS handshakes are slow under the race detector on a busy
			// machine: give the health checks room.
			HealthInterval: 300 * time.Millisecond, LeaseTTL: 2 * time.Second, JoinTimeout: 5 * time.Second,
			DrainTimeout: 5 * time.Second, Logger: quietLog(),
		})
		return err
	}, portTaken)
	if err != nil {
		t.Fatal(err)
	}
	go a.Run(context.Background())
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		a.Shutdown(ctx)
	})
	waitReady(t, a)

	newClient := func(c fanout.Config) *fanout.Client {
		t.Helper()
		c.Etcd, c.Cluster, c.Logger, c.WaitReady = etcdCfg, "secure", quietLog(), time.Second
		// A TLS handshake that times out is, rightly, "not answering"
		// rather than a refusal; on a starved machine (load average 11 seen
		// in CI) it can take seconds, so give the refusal time to arrive.
		c.DialTimeout = 10 * time.Second
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		cl, err := fanout.New(ctx, c)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cl.Close() })
		return cl
	}
	good := fanout.Config{Password: pw, TLS: testsec.Client(t, certs.CA, certs.Client)}
	sub, err := newClient(good).Subscribe(context.Background(), "news")
	if err != nil {
		t.Fatalf("Subscribe with the right credentials: %v", err)
	}
	if err := newClient(good).Publish(context.Background(), "news", []byte("hello")); err != nil {
		t.Fatalf("Publish with the right credentials: %v", err)
	}
	if got := recv(t, sub, 1, 10*time.Second); string(got[0].Payload) != "hello" || got[0].Node != "n1" {
		t.Fatalf("received %q from %s", got[0].Payload, got[0].Node)
	}

	for _, tc := range []struct {
		name string
		cfg  fanout.Config
		want string
	}{
		{"wrong password", fanout.Config{Password: "wrong", TLS: good.TLS}, "WRONGPASS"},
		{"no password", fanout.Config{TLS: good.TLS}, "NOAUTH"},
		{"wrong CA", fanout.Config{Password: pw, TLS: testsec.Client(t, other.CA, certs.Client)}, "certificate signed by unknown authority"},
		{"no TLS settings", fanout.Config{Password: pw}, "the node requires TLS"},
		{"no client certificate", fanout.Config{Password: pw, TLS: testsec.Client(t, certs.CA, devcerts.Pair{})}, "certificate required"},
		{"expired client certificate", fanout.Config{Password: pw, TLS: testsec.Client(t, certs.CA, expired)}, "expired certificate"},
	} {
		c := newClient(tc.cfg)
		t0 := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		_, err := c.Subscribe(ctx, "news")
		cancel()
		var ne *fanout.NodeError
		switch {
		case err == nil:
			t.Errorf("%s: Subscribe worked", tc.name)
			continue
		case !errors.As(err, &ne) || ne.Node != "n1" || ne.Addr != a.Addr():
			t.Errorf("%s: Subscribe: %v, want a *NodeError for n1", tc.name, err)
		case !strings.HasPrefix(err.Error(), "fanout: node n1 ("+a.Addr()+"): ") || !strings.Contains(err.Error(), tc.want):
			t.Errorf("%s: Subscribe: %q, want \"fanout: node n1 (%s): ...%s...\"", tc.name, err, a.Addr(), tc.want)
		case time.Since(t0) > 10*time.Second:
			t.Errorf("%s: Subscribe took %s to fail", tc.name, time.Since(t0))
		}
		t.Logf("%s: %v", tc.name, err)
		err = c.Publish(context.Background(), "news", []byte("x"))
		if !errors.Is(err, fanout.ErrNoNodes) || !errors.As(err, &ne) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: Publish: %v, want ErrNoNodes with the node's error", tc.name, err)
		}
	}
}

// A client with TLS settings never speaks plain text, even to a node the
// registry lists without tls: the node is refused at once, and Publish says
// why.
func TestTLSClientRefusesPlainNode(t *testing.T) {
	t.Parallel()
	certs, err := devcerts.Generate(filepath.Join(t.TempDir(), "tls"), devcerts.Options{})
	if err != nil {
		t.Fatal(err)
	}
	e := newEnv(t)
	rs, _ := e.node("plain", discovery.StateReady)
	c := e.client(fanout.Config{Password: "pw", TLS: testsec.Client(t, certs.CA, devcerts.Pair{}), Logger: quietLog()})
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	_, err = c.Subscribe(ctx, "news")
	var ne *fanout.NodeError
	if !errors.As(err, &ne) || ne.Node != "plain" || ne.Addr != rs.Addr || !strings.Contains(err.Error(), "registered without tls") {
		t.Fatalf("Subscribe through a plain node: %v, want a *NodeError saying it is registered without tls", err)
	}
	t.Log(err)
	if err := c.Publish(ctx, "news", []byte("x")); !errors.Is(err, fanout.ErrNoNodes) || !errors.As(err, &ne) {
		t.Errorf("Publish through a plain node: %v, want ErrNoNodes with a *NodeError", err)
	}
}
