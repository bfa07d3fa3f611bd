package discovery_test

import (
	"context"
	"encoding/json"
	"errors"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/pubmesh/pubmesh/discovery"
)

// Two clients with one id must not share the key: the second is refused
// with ErrClientIDTaken and the first keeps its key, its lease and its
// value. Once the first leaves, the id is free again.
func TestRegisterClientIDTaken(t *testing.T) {
	t.Parallel()
	f := setup(t)
	ctx := context.Background()
	first, err := f.reg.RegisterClient(ctx, discovery.ClientInfo{ID: "gw-1", Host: "first"}, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.reg.RegisterClient(ctx, discovery.ClientInfo{ID: "gw-1", Host: "second"}, 0)
	if !errors.Is(err, discovery.ErrClientIDTaken) {
		t.Fatalf("second RegisterClient with the same id = %v, want ErrClientIDTaken", err)
	}
	clients, err := f.reg.Clients(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(clients) != 1 || clients[0].Host != "first" {
		t.Fatalf("clients after the refused registration: %+v, want only the first", clients)
	}
	resp, err := f.cli.Get(ctx, "/pubmesh/"+f.reg.Cluster()+"/clients/gw-1")
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("client key: %v %v", resp, err)
	}
	if got := resp.Kvs[0].Lease; got != int64(first.ID()) {
		t.Errorf("client key's lease = %x, want the first registration's %x", got, first.ID())
	}
	var ci discovery.ClientInfo
	if err := json.Unmarshal(resp.Kvs[0].Value, &ci); err != nil || ci.Host != "first" {
		t.Errorf("client value %s (%v), want the first's", resp.Kvs[0].Value, err)
	}

	if err := first.Close(ctx); err != nil {
		t.Fatal(err)
	}
	again, err := f.reg.RegisterClient(ctx, discovery.ClientInfo{ID: "gw-1", Host: "second"}, 0)
	if err != nil {
		t.Fatalf("RegisterClient once the id is free: %v", err)
	}
	again.Close(ctx)
}

// ClearAcks deletes the acks about a node that has left, and leaves those of
// a node that holds the id alone: they may be for its live registration.
func TestClearAcksOnlyOnceTheNodeLeft(t *testing.T) {
	t.Parallel()
	f := setup(t)
	ctx := context.Background()
	c, err := f.reg.RegisterClient(ctx, discovery.ClientInfo{ID: "c1"}, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	g, err := f.reg.Register(ctx, node("a", discovery.StateJoining), discovery.RegisterOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Ack(ctx, "a", discovery.Ack{RunID: "r1", Incarnation: g.Node().Incarnation, State: discovery.AckSubscribed}); err != nil {
		t.Fatal(err)
	}
	acks := func() int64 {
		t.Helper()
		resp, err := f.cli.Get(ctx, "/pubmesh/"+f.reg.Cluster()+"/acks/a/", clientv3.WithPrefix(), clientv3.WithCountOnly())
		if err != nil {
			t.Fatal(err)
		}
		return resp.Count
	}
	if err := f.reg.ClearAcks(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if n := acks(); n != 1 {
		t.Fatalf("%d acks about a live node after ClearAcks, want its 1", n)
	}
	if err := g.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if err := f.reg.ClearAcks(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if n := acks(); n != 0 {
		t.Fatalf("%d acks about a node that left, after ClearAcks", n)
	}
}
