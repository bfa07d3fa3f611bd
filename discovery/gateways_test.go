package discovery_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/pubmesh/pubmesh/discovery"
)

// A gateway registers, updates its counts, is listed, is refused a second
// registration of its id, and vanishes on Close; a lease revoked behind
// its back makes Update fail with ErrLeaseLost and Done fire.
func TestGatewayRegistration(t *testing.T) {
	t.Parallel()
	f := setup(t)
	ctx := context.Background()
	g, err := f.reg.RegisterGateway(ctx, discovery.GatewayInfo{ID: "gw-b", URL: "http://127.0.0.1:1/", StartedAt: time.Now().UTC()}, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.reg.RegisterGateway(ctx, discovery.GatewayInfo{ID: "gw-b"}, 0); !errors.Is(err, discovery.ErrGatewayIDTaken) {
		t.Fatalf("second registration of gw-b = %v, want ErrGatewayIDTaken", err)
	}
	a, err := f.reg.RegisterGateway(ctx, discovery.GatewayInfo{ID: "gw-a", URL: "http://127.0.0.1:2/"}, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := g.Update(ctx, func(gi *discovery.GatewayInfo) {
		gi.ID = "ignored" // the id is the registration's
		gi.Connections = map[string]int{"websocket": 3, "sse": 2}
		gi.Subscriptions, gi.Channels = 7, 4
	}); err != nil {
		t.Fatal(err)
	}
	list, err := f.reg.Gateways(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 2 || list[0].ID != "gw-a" || list[1].ID != "gw-b" {
		t.Fatalf("Gateways = %+v, want gw-a then gw-b", list)
	}
	if b := list[1]; b.URL != "http://127.0.0.1:1/" || b.TotalConnections() != 5 || b.Subscriptions != 7 || b.Channels != 4 {
		t.Errorf("gw-b = %+v", b)
	}
	if err := a.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if list, _ := f.reg.Gateways(ctx); len(list) != 1 || list[0].ID != "gw-b" {
		t.Errorf("after gw-a closed: %+v", list)
	}
	// Lost lease: the key goes with it, Update refuses.
	if _, err := f.cli.Revoke(ctx, g.ID()); err != nil {
		t.Fatal(err)
	}
	select {
	case <-g.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("Done did not fire after the lease was revoked")
	}
	if err := g.Update(ctx, func(*discovery.GatewayInfo) {}); !errors.Is(err, discovery.ErrLeaseLost) {
		t.Errorf("Update after the lease was lost = %v, want ErrLeaseLost", err)
	}
	if list, _ := f.reg.Gateways(ctx); len(list) != 0 {
		t.Errorf("after gw-b's lease was revoked: %+v", list)
	}
}
