package embedetcd_test

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pubmesh/pubmesh/discovery"
	"github.com/pubmesh/pubmesh/internal/devcerts"
	"github.com/pubmesh/pubmesh/internal/embedetcd"
	"github.com/pubmesh/pubmesh/internal/testsec"
)

// The embedded etcd with mutual TLS and a root password: the right
// credentials work; a wrong password, a wrong CA, no client certificate, an
// expired one, or plain http are each refused with an error that says why.
// The data kept on disk brings authentication back on a restart.
func TestTLSAndAuth(t *testing.T) {
	t.Parallel()
	certs, err := devcerts.Generate(filepath.Join(t.TempDir(), "tls"), devcerts.Options{})
	if err != nil {
		t.Fatal(err)
	}
	other, err := devcerts.Generate(filepath.Join(t.TempDir(), "other"), devcerts.Options{})
	if err != nil {
		t.Fatal(err)
	}
	expired := testsec.Expired(t, certs, devcerts.Client)

	dir := t.TempDir()
	cfg := embedetcd.Config{
		Dir:          dir,
		TLS:          &embedetcd.TLS{CertFile: certs.Etcd.Cert, KeyFile: certs.Etcd.Key, ClientCAFile: certs.CA},
		RootPassword: "s3cret-root",
	}
	srv, err := embedetcd.Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	if !strings.HasPrefix(srv.Endpoint(), "https://") {
		t.Fatalf("Endpoint %q, want https://", srv.Endpoint())
	}

	dial := func(c discovery.EtcdConfig) error {
		c.Endpoints = []string{srv.Endpoint()}
		// Generous: a refusal comes back in milliseconds, but under -race on a
		// loaded machine the TLS handshake alone can take over a second, and
		// a timeout would hide the reason the test looks for.
		c.DialTimeout = 5 * time.Second
		cli, err := discovery.Dial(context.Background(), c)
		if err == nil {
			cli.Close()
		}
		return err
	}
	good := discovery.EtcdConfig{TLS: testsec.Client(t, certs.CA, certs.Client), Username: "root", Password: "s3cret-root"}
	if err := dial(good); err != nil {
		t.Fatalf("right credentials: %v", err)
	}
	for _, tc := range []struct {
		name string
		cfg  discovery.EtcdConfig
		want string
	}{
		{"wrong password", discovery.EtcdConfig{TLS: good.TLS, Username: "root", Password: "nope"}, "authentication failed"},
		{"no user", discovery.EtcdConfig{TLS: good.TLS}, "permission denied (etcd has authentication enabled"},
		{"wrong CA", discovery.EtcdConfig{TLS: testsec.Client(t, other.CA, certs.Client), Username: "root", Password: "s3cret-root"}, "certificate signed by unknown authority"},
		{"no client certificate", discovery.EtcdConfig{TLS: testsec.Client(t, certs.CA, devcerts.Pair{}), Username: "root", Password: "s3cret-root"}, "certificate required"},
		{"client certificate of another CA", discovery.EtcdConfig{TLS: testsec.Client(t, certs.CA, other.Client), Username: "root", Password: "s3cret-root"}, "unknown certificate authority"},
		{"expired client certificate", discovery.EtcdConfig{TLS: testsec.Client(t, certs.CA, expired), Username: "root", Password: "s3cret-root"}, "expired certificate"},
	} {
		err := dial(tc.cfg)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error with %q", tc.name, err, tc.want)
		}
	}
	plain := discovery.EtcdConfig{Endpoints: []string{"http://" + strings.TrimPrefix(srv.Endpoint(), "https://")}, DialTimeout: time.Second}
	if cli, err := discovery.Dial(context.Background(), plain); err == nil {
		cli.Close()
		t.Error("plain http to a TLS etcd worked")
	} else if !strings.Contains(err.Error(), "speaks TLS: use https://") {
		t.Errorf("plain http: %v, want a hint to use https://", err)
	}

	// Restart on the same data: authentication is still on, with the same
	// root password; another root password is refused clearly.
	srv.Close()
	srv2, err := embedetcd.Start(cfg)
	if err != nil {
		t.Fatalf("restart with the same root password: %v", err)
	}
	srv2.Close()
	bad := cfg
	bad.RootPassword = "another"
	if srv3, err := embedetcd.Start(bad); err == nil {
		srv3.Close()
		t.Error("restart with another root password worked")
	} else if !strings.Contains(err.Error(), "root password does not work") {
		t.Errorf("restart with another root password: %v", err)
	}
}
