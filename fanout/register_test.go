package fanout_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/pubmesh/pubmesh/discovery"
	"github.com/pubmesh/pubmesh/fanout"
)

// A second client with a live client's id is refused at New with
// discovery.ErrClientIDTaken, and the first stays registered.
func TestNewRefusesATakenClientID(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.client(fanout.Config{ID: "same-id"})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := fanout.New(ctx, fanout.Config{ID: "same-id", EtcdClient: e.cli, Cluster: e.cluster})
	if err == nil {
		c.Close()
		t.Fatal("a second client with the same id was accepted")
	}
	if !errors.Is(err, discovery.ErrClientIDTaken) || !strings.HasPrefix(err.Error(), "fanout: ") {
		t.Fatalf("New with a taken id = %v, want a fanout error wrapping discovery.ErrClientIDTaken", err)
	}
	clients, err := e.reg.Clients(ctx)
	if err != nil || len(clients) != 1 {
		t.Fatalf("clients = %+v, %v; want the first only", clients, err)
	}
}
