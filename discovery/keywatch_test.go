package discovery_test

import (
	"context"
	"errors"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/pubmesh/pubmesh/discovery"
)

// A Registration is over when its key is deleted or written under another
// lease while its lease lives, not only when the lease is lost; Err says
// which, and Close still works afterwards.
func TestRegistrationEndsWhenItsKeyIsGone(t *testing.T) {
	t.Parallel()
	f := setup(t)
	for _, tc := range []struct {
		name string
		do   func(ctx context.Context, key string) error
		want error
	}{
		{"deleted", func(ctx context.Context, key string) error {
			_, err := f.cli.Delete(ctx, key)
			return err
		}, discovery.ErrKeyDeleted},
		{"overwritten without the lease", func(ctx context.Context, key string) error {
			_, err := f.cli.Put(ctx, key, `{"id":"x"}`)
			return err
		}, discovery.ErrKeyDeleted},
		{"lease revoked", func(ctx context.Context, key string) error {
			resp, err := f.cli.Get(ctx, key)
			if err != nil {
				return err
			}
			_, err = f.cli.Revoke(ctx, clientv3.LeaseID(resp.Kvs[0].Lease))
			return err
		}, discovery.ErrLeaseLost},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			g, err := f.reg.Register(ctx, node("k-"+tc.name[:4], discovery.StateReady), discovery.RegisterOptions{})
			if err != nil {
				t.Fatal(err)
			}
			defer g.Close(ctx)
			select {
			case <-g.Done():
				t.Fatalf("Done before anything happened: %v", g.Err())
			case <-time.After(100 * time.Millisecond):
			}
			if err := tc.do(ctx, f.reg.NodeKey(g.Node().ID)); err != nil {
				t.Fatal(err)
			}
			select {
			case <-g.Done():
			case <-ctx.Done():
				t.Fatal("Done not closed")
			}
			if !errors.Is(g.Err(), tc.want) {
				t.Errorf("Err = %v, want %v", g.Err(), tc.want)
			}
			if err := g.SetState(ctx, discovery.StateDraining); err == nil {
				t.Error("SetState on an ended registration succeeded")
			}
		})
	}
	// Close ends it too.
	ctx := context.Background()
	g, err := f.reg.Register(ctx, node("closed", discovery.StateReady), discovery.RegisterOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := g.Close(ctx); err != nil {
		t.Fatal(err)
	}
	<-g.Done()
	if !errors.Is(g.Err(), discovery.ErrClosedLease) {
		t.Errorf("Err after Close = %v", g.Err())
	}
	if err := g.Close(ctx); err != nil {
		t.Errorf("second Close: %v", err)
	}
}
