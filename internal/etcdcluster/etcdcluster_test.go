package etcdcluster_test

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"
	"go.uber.org/zap"

	"github.com/pubmesh/pubmesh/internal/devcerts"
	"github.com/pubmesh/pubmesh/internal/etcdcluster"
)

func TestMain(m *testing.M) {
	etcdcluster.Main()
	code := m.Run()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			code = 1
			println("goleak:", err.Error())
		}
	}
	os.Exit(code)
}

// TestQuorum: three members serve; with two killed a write fails; with
// them back it works again; the leader killed or stopped and restarted
// never stops writes for long.
func TestQuorum(t *testing.T) {
	c, err := etcdcluster.Start(etcdcluster.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	cli, err := clientv3.New(clientv3.Config{Endpoints: c.Endpoints(), DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	// put retries until within has passed, as a client riding out an
	// election does.
	put := func(within time.Duration) error {
		deadline := time.Now().Add(within)
		for {
			ctx, cancel := context.WithTimeout(context.Background(), time.Until(deadline))
			_, err := cli.Put(ctx, "/k", "v")
			cancel()
			if err == nil || time.Now().After(deadline) {
				return err
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := put(5 * time.Second); err != nil {
		t.Fatalf("put on a healthy cluster: %v", err)
	}
	lead := c.Leader(ctx)
	if lead < 0 {
		t.Fatal("no leader")
	}

	// Quorum lost: two of three killed.
	c.Kill((lead+1)%3, (lead+2)%3)
	if c.Running((lead+1)%3) || c.PID((lead+1)%3) != 0 {
		t.Fatal("killed member still running")
	}
	if err := put(2 * time.Second); err == nil {
		t.Fatal("put succeeded with one member of three")
	}
	if err := c.Restart((lead+1)%3, (lead+2)%3); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitHealthy(ctx); err != nil {
		t.Fatal(err)
	}
	if err := put(5 * time.Second); err != nil {
		t.Fatalf("put after quorum came back: %v", err)
	}

	// The leader killed, then restarted: the other two elect one.
	lead = c.Leader(ctx)
	c.Kill(lead)
	if err := put(20 * time.Second); err != nil {
		t.Fatalf("put with the leader killed (two of three up): %v", err)
	}
	if err := c.Restart(lead); err != nil {
		t.Fatal(err)
	}
	// A graceful stop hands leadership over.
	lead = c.Leader(ctx)
	c.Stop(20*time.Second, lead)
	if err := put(20 * time.Second); err != nil {
		t.Fatalf("put with the leader stopped: %v", err)
	}
	if err := c.Restart(lead); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitHealthy(ctx); err != nil {
		t.Fatal(err)
	}
	if n := c.Leader(ctx); n < 0 {
		t.Fatal("no leader at the end")
	}
}

// TestTLS: with Config.TLS the members serve clients and peers over TLS
// (https:// endpoints), a client with a certificate signed by the CA
// writes, and one without a certificate is refused.
func TestTLS(t *testing.T) {
	dir := t.TempDir()
	set, err := devcerts.Generate(dir, devcerts.Options{})
	if err != nil {
		t.Fatal(err)
	}
	cert := etcdcluster.Pair{Cert: set.Etcd.Cert, Key: set.Etcd.Key}
	c, err := etcdcluster.Start(etcdcluster.Config{TLS: &etcdcluster.TLS{
		CA:     set.CA,
		Certs:  []etcdcluster.Pair{cert, cert, cert},
		Client: etcdcluster.Pair{Cert: set.Client.Cert, Key: set.Client.Key},
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, ep := range c.Endpoints() {
		if !strings.HasPrefix(ep, "https://") {
			t.Fatalf("endpoint %s, want https://", ep)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.WaitHealthy(ctx); err != nil {
		t.Fatal(err)
	}
	// Trusting the CA but presenting no certificate: refused.
	tc, err := transport.TLSInfo{TrustedCAFile: set.CA}.ClientConfig()
	if err != nil {
		t.Fatal(err)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: c.Endpoints(), DialTimeout: 2 * time.Second, TLS: tc, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	pctx, pcancel := context.WithTimeout(ctx, 3*time.Second)
	defer pcancel()
	if _, err := cli.Put(pctx, "/k", "v"); err == nil {
		t.Fatal("a client without a certificate could write")
	}
}
