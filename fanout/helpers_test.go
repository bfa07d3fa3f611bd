package fanout_test

import (
	"context"
	"fmt"
	"net"
	"regexp"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/pubmesh/pubmesh/discovery"
	"github.com/pubmesh/pubmesh/fanout"
	"github.com/pubmesh/pubmesh/internal/embedetcd"
	"github.com/pubmesh/pubmesh/internal/freeport"
	"github.com/pubmesh/pubmesh/internal/testredis"
)

// env is a cluster for one test: a real etcd and real redis-servers that the
// test registers itself (the broker's tests cover the agent).
type env struct {
	t       *testing.T
	etcd    *embedetcd.Server
	cli     *clientv3.Client
	reg     *discovery.Registry
	cluster string
}

func newEnv(t *testing.T) *env {
	t.Helper()
	srv, err := embedetcd.Start(embedetcd.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	cli, err := discovery.Dial(context.Background(), discovery.EtcdConfig{Endpoints: []string{srv.Endpoint()}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	cluster := regexp.MustCompile(`[^A-Za-z0-9.:-]+`).ReplaceAllString(t.Name(), "-")
	reg, err := discovery.New(cli, discovery.Config{Cluster: cluster})
	if err != nil {
		t.Fatal(err)
	}
	return &env{t: t, etcd: srv, cli: cli, reg: reg, cluster: cluster}
}

// node starts a redis-server and registers it in state st.
func (e *env) node(id string, st discovery.State) (*testredis.Server, *discovery.Registration) {
	e.t.Helper()
	rs := testredis.New(e.t)
	g, err := e.reg.Register(context.Background(), discovery.Node{
		ID: id, Addr: rs.Addr, State: st, StartedAt: time.Now(), Version: "test", RunID: fmt.Sprint(rs.PID()),
	}, discovery.RegisterOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { g.Close(context.Background()) })
	return rs, g
}

// register registers a node at addr (a proxy, or nothing at all) in
// state st.
func (e *env) register(id, addr string, st discovery.State) *discovery.Registration {
	e.t.Helper()
	g, err := e.reg.Register(context.Background(), discovery.Node{
		ID: id, Addr: addr, State: st, StartedAt: time.Now(), Version: "test", RunID: id,
	}, discovery.RegisterOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { g.Close(context.Background()) })
	return g
}

func (e *env) client(cfg fanout.Config) *fanout.Client {
	e.t.Helper()
	cfg.EtcdClient = e.cli
	cfg.Cluster = e.cluster
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := fanout.New(ctx, cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { c.Close() })
	return c
}

func recv(t *testing.T, s *fanout.Subscription, n int, within time.Duration) []*fanout.Message {
	t.Helper()
	var out []*fanout.Message
	deadline := time.After(within)
	for len(out) < n {
		select {
		case m, ok := <-s.Messages():
			if !ok {
				t.Fatalf("subscription closed after %d of %d messages", len(out), n)
			}
			out = append(out, m)
		case <-deadline:
			t.Fatalf("got %d of %d messages within %s", len(out), n, within)
		}
	}
	return out
}

func freePort(t *testing.T) int {
	t.Helper()
	p, err := freeport.Get()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// hungAddr is the address of a listener that accepts connections and
// never answers: a hung node. It and its connections close when the test
// ends.
func hungAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	return ln.Addr().String()
}
