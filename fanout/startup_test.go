package fanout_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/pubmesh/pubmesh/discovery"
	"github.com/pubmesh/pubmesh/fanout"
	"github.com/pubmesh/pubmesh/internal/embedetcd"
)

// TestNewWaitsForEtcd: New started before etcd (a cold start of a whole
// system) waits for it, with backoff, until its context ends, instead of
// failing at once and crash-looping; a context that ends first is the
// error, wrapped.
func TestNewWaitsForEtcd(t *testing.T) {
	t.Parallel()
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	cfg := fanout.Config{
		Etcd:    discovery.EtcdConfig{Endpoints: []string{"http://" + addr}, DialTimeout: 300 * time.Millisecond},
		Cluster: "startup", Logger: quietLog(),
	}

	t.Run("context ends first", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		c, err := fanout.New(ctx, cfg)
		if err == nil {
			c.Close()
			t.Fatal("New succeeded with nothing listening")
		}
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("New: %v, want the context's error wrapped", err)
		}
	})

	t.Run("etcd comes late", func(t *testing.T) {
		started := make(chan *embedetcd.Server, 1)
		go func() {
			time.Sleep(3 * time.Second)
			srv, err := embedetcd.Start(embedetcd.Config{ClientAddr: addr})
			if err != nil {
				t.Error(err)
			}
			started <- srv
		}()
		t.Cleanup(func() {
			if srv := <-started; srv != nil {
				srv.Close()
			}
		})
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		c, err := fanout.New(ctx, cfg)
		if err != nil {
			t.Fatalf("New did not wait for etcd: %v", err)
		}
		if err := c.Close(); err != nil {
			t.Fatal(err)
		}
	})
}
