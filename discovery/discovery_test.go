package discovery_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"

	"github.com/pubmesh/pubmesh/discovery"
	"github.com/pubmesh/pubmesh/internal/embedetcd"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// etcd's embedded server and grpc keep a few process-wide goroutines.
		goleak.IgnoreAnyFunction("go.etcd.io/etcd/pkg/v3/logutil.(*MergeLogger).outputLoop"),
		goleak.IgnoreTopFunction("google.golang.org/grpc/internal/grpcsync.(*CallbackSerializer).run"),
		goleak.IgnoreTopFunction("go.opencensus.io/stats/view.(*worker).start"),
		goleak.IgnoreTopFunction("internal/poll.runtime_pollWait"),
	)
}

type fixture struct {
	srv *embedetcd.Server
	cli *clientv3.Client
	reg *discovery.Registry
}

func setup(t *testing.T) *fixture {
	t.Helper()
	srv, err := embedetcd.Start(embedetcd.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	cli := dial(t, srv)
	reg, err := discovery.New(cli, discovery.Config{Cluster: strings.ReplaceAll(t.Name(), "/", "-")})
	if err != nil {
		t.Fatal(err)
	}
	return &fixture{srv: srv, cli: cli, reg: reg}
}

func dial(t *testing.T, srv *embedetcd.Server) *clientv3.Client {
	t.Helper()
	cli, err := discovery.Dial(context.Background(), discovery.EtcdConfig{Endpoints: []string{srv.Endpoint()}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

func node(id string, st discovery.State) discovery.Node {
	return discovery.Node{ID: id, Addr: "127.0.0.1:7001", State: st, StartedAt: time.Now().UTC(), Version: "test", RunID: "r1"}
}

// next returns the first snapshot for which ok is true, within d.
func next(t *testing.T, ch <-chan discovery.Snapshot, d time.Duration, ok func(discovery.Snapshot) bool) discovery.Snapshot {
	t.Helper()
	deadline := time.After(d)
	var last discovery.Snapshot
	for {
		select {
		case s, open := <-ch:
			if !open {
				t.Fatal("watch channel closed")
			}
			last = s
			if ok(s) {
				return s
			}
		case <-deadline:
			t.Fatalf("no matching snapshot within %s; last: %+v", d, last)
		}
	}
}

func ids(s discovery.Snapshot) string {
	var out []string
	for _, n := range s.Nodes {
		out = append(out, n.ID+"="+string(n.State))
	}
	return strings.Join(out, ",")
}

func TestRegisterWatchAndStates(t *testing.T) {
	t.Parallel()
	f := setup(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	w := f.reg.Watch(ctx, discovery.WatchOptions{})
	next(t, w, 5*time.Second, func(s discovery.Snapshot) bool { return len(s.Nodes) == 0 && !s.Stale })

	a, err := f.reg.Register(ctx, node("a", discovery.StateJoining), discovery.RegisterOptions{})
	if err != nil {
		t.Fatal(err)
	}
	next(t, w, 5*time.Second, func(s discovery.Snapshot) bool { return ids(s) == "a=joining" })
	if err := a.SetState(ctx, discovery.StateReady); err != nil {
		t.Fatal(err)
	}
	s := next(t, w, 5*time.Second, func(s discovery.Snapshot) bool { return ids(s) == "a=ready" })
	if len(s.Ready()) != 1 || s.Ready()[0].Addr != "127.0.0.1:7001" {
		t.Fatalf("ready set: %+v", s.Ready())
	}
	if _, err := f.reg.Register(ctx, node("a", discovery.StateJoining), discovery.RegisterOptions{}); !errors.Is(err, discovery.ErrNodeExists) {
		t.Fatalf("second registration of a: %v, want ErrNodeExists", err)
	}
	b, err := f.reg.Register(ctx, node("b", discovery.StateReady), discovery.RegisterOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close(ctx)
	next(t, w, 5*time.Second, func(s discovery.Snapshot) bool { return ids(s) == "a=ready,b=ready" })
	if err := a.Close(ctx); err != nil {
		t.Fatal(err)
	}
	next(t, w, 5*time.Second, func(s discovery.Snapshot) bool { return ids(s) == "b=ready" })
	if err := a.SetState(ctx, discovery.StateDraining); err == nil {
		t.Fatal("SetState after Close succeeded")
	}
	list, _, err := f.reg.List(ctx)
	if err != nil || len(list) != 1 || list[0].ID != "b" {
		t.Fatalf("List = %v, %v", list, err)
	}
}

// RegisterOptions.Prepare runs before the node is written: the key is not
// there while it runs, and its error fails Register, writes nothing and
// leaves no lease behind.
func TestRegisterPrepare(t *testing.T) {
	t.Parallel()
	f := setup(t)
	ctx := context.Background()
	leases := func() int {
		resp, err := f.cli.Leases(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return len(resp.Leases)
	}
	before := leases()
	boom := errors.New("boom")
	_, err := f.reg.Register(ctx, node("p", discovery.StateJoining), discovery.RegisterOptions{Prepare: func(context.Context) error { return boom }})
	if !errors.Is(err, boom) {
		t.Fatalf("Register with a failing Prepare: %v, want boom", err)
	}
	if list, _, _ := f.reg.List(ctx); len(list) != 0 {
		t.Fatalf("a failed Prepare left nodes: %+v", list)
	}
	if n := leases(); n != before {
		t.Fatalf("a failed Prepare left %d leases, want %d", n, before)
	}
	ran := false
	reg, err := f.reg.Register(ctx, node("p", discovery.StateJoining), discovery.RegisterOptions{Prepare: func(ctx context.Context) error {
		ran = true
		resp, err := f.cli.Get(ctx, f.reg.NodeKey("p"))
		if err != nil {
			return err
		}
		if len(resp.Kvs) != 0 {
			return fmt.Errorf("the node key exists while Prepare runs")
		}
		return nil
	}})
	if err != nil || !ran {
		t.Fatalf("Register: %v (Prepare ran: %v)", err, ran)
	}
	defer reg.Close(ctx)
	if list, _, _ := f.reg.List(ctx); len(list) != 1 || list[0].ID != "p" {
		t.Fatalf("after Register: %+v", list)
	}
}

func TestBadInput(t *testing.T) {
	t.Parallel()
	f := setup(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	bad := []discovery.Node{
		{ID: "", Addr: "127.0.0.1:1", State: discovery.StateReady},
		{ID: "a/b", Addr: "127.0.0.1:1", State: discovery.StateReady},
		{ID: "a", Addr: "nohost", State: discovery.StateReady},
		{ID: "a", Addr: "127.0.0.1:1", State: "sleeping"},
	}
	for _, n := range bad {
		if _, err := f.reg.Register(ctx, n, discovery.RegisterOptions{}); err == nil {
			t.Errorf("Register(%+v) succeeded", n)
		}
	}
	if _, err := discovery.New(f.cli, discovery.Config{Cluster: "a/b"}); err == nil {
		t.Error("cluster name with a slash accepted")
	}
	// Garbage written by someone else is skipped, not fatal, and a value
	// claiming another id is refused.
	w := f.reg.Watch(ctx, discovery.WatchOptions{})
	f.cli.Put(ctx, f.reg.NodeKey("junk"), "{not json")
	f.cli.Put(ctx, f.reg.NodeKey("liar"), `{"id":"other","addr":"127.0.0.1:1","state":"ready"}`)
	good, _ := f.reg.Register(ctx, node("good", discovery.StateReady), discovery.RegisterOptions{})
	defer good.Close(ctx)
	next(t, w, 5*time.Second, func(s discovery.Snapshot) bool { return ids(s) == "good=ready" })
	list, _, err := f.reg.List(ctx)
	if err != nil || len(list) != 1 {
		t.Fatalf("List = %v, %v", list, err)
	}
	if err := f.reg.RequestDrain(ctx, "nobody", "test"); err == nil {
		t.Error("drain of a missing node succeeded")
	}
}

func TestLeaseExpiresWhenAgentDies(t *testing.T) {
	t.Parallel()
	f := setup(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	w := f.reg.Watch(ctx, discovery.WatchOptions{})
	// The "agent" has its own etcd client; closing it stops keep-alives
	// without revoking, as a crash would.
	agentCli := dial(t, f.srv)
	areg, _ := discovery.New(agentCli, discovery.Config{Cluster: f.reg.Cluster()})
	if _, err := areg.Register(ctx, node("crashy", discovery.StateReady), discovery.RegisterOptions{TTL: 2 * time.Second}); err != nil {
		t.Fatal(err)
	}
	next(t, w, 5*time.Second, func(s discovery.Snapshot) bool { return ids(s) == "crashy=ready" })
	start := time.Now()
	agentCli.Close()
	next(t, w, 10*time.Second, func(s discovery.Snapshot) bool { return len(s.Nodes) == 0 })
	if d := time.Since(start); d < time.Second {
		t.Fatalf("node vanished after %s, before its 2s lease could expire", d)
	}
}

func TestWatchRecoversAfterCompaction(t *testing.T) {
	t.Parallel()
	f := setup(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// A second registry's watch, slow to be read: it is behind when the
	// store is compacted.
	w := f.reg.Watch(ctx, discovery.WatchOptions{})
	next(t, w, 5*time.Second, func(s discovery.Snapshot) bool { return !s.Stale })
	g, err := f.reg.Register(ctx, node("a", discovery.StateJoining), discovery.RegisterOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, st := range []discovery.State{discovery.StateReady, discovery.StateDraining, discovery.StateReady} {
		g.SetState(ctx, st)
	}
	resp, _ := f.cli.Get(ctx, "x")
	if _, err := f.cli.Compact(ctx, resp.Header.Revision, clientv3.WithCompactPhysical()); err != nil {
		t.Fatal(err)
	}
	b, _ := f.reg.Register(ctx, node("b", discovery.StateReady), discovery.RegisterOptions{})
	defer b.Close(ctx)
	defer g.Close(ctx)
	next(t, w, 10*time.Second, func(s discovery.Snapshot) bool { return ids(s) == "a=ready,b=ready" && !s.Stale })
}

func TestEtcdRestartKeepsNodesAndLeases(t *testing.T) {
	t.Parallel()
	f := setup(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	w := f.reg.Watch(ctx, discovery.WatchOptions{ProbeInterval: 200 * time.Millisecond, ProbeTimeout: 300 * time.Millisecond})
	// The default TTL: the lease survives only if the client reaches the
	// restarted etcd within one TTL, which a starved machine may not do in 2s.
	g, err := f.reg.Register(ctx, node("a", discovery.StateReady), discovery.RegisterOptions{TTL: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	next(t, w, 5*time.Second, func(s discovery.Snapshot) bool { return ids(s) == "a=ready" })

	f.srv.Stop()
	s := next(t, w, 10*time.Second, func(s discovery.Snapshot) bool { return s.Stale })
	if ids(s) != "a=ready" || s.Err == nil {
		t.Fatalf("stale snapshot %q (err %v): the last known set must be kept", ids(s), s.Err)
	}
	time.Sleep(6 * time.Second) // longer than the TTL: the client-side keep-alive gives up
	if err := f.srv.Restart(); err != nil {
		t.Fatal(err)
	}
	next(t, w, 45*time.Second, func(s discovery.Snapshot) bool { return !s.Stale && ids(s) == "a=ready" }) // generous: a starved machine restarts etcd slowly
	// The lease survived the restart, so the registration goes on.
	select {
	case <-g.Done():
		t.Fatalf("registration lost across an etcd restart: %v", g.Err())
	case <-time.After(3 * time.Second):
	}
	if err := g.SetState(ctx, discovery.StateDraining); err != nil {
		t.Fatalf("SetState after restart: %v", err)
	}
	next(t, w, 5*time.Second, func(s discovery.Snapshot) bool { return ids(s) == "a=draining" })
	g.Close(ctx)
}

func TestDrainRequest(t *testing.T) {
	t.Parallel()
	f := setup(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	g, _ := f.reg.Register(ctx, node("a", discovery.StateReady), discovery.RegisterOptions{})
	defer g.Close(ctx)
	drained := f.reg.DrainRequested(ctx, "a", g.Node().Incarnation)
	select {
	case <-drained:
		t.Fatal("drain signalled before any request")
	case <-time.After(200 * time.Millisecond):
	}
	if err := f.reg.RequestDrain(ctx, "a", "test"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-drained:
	case <-time.After(5 * time.Second):
		t.Fatal("drain request not seen")
	}
	// A request made before the agent starts watching is seen too.
	select {
	case <-f.reg.DrainRequested(ctx, "a", g.Node().Incarnation):
	case <-time.After(5 * time.Second):
		t.Fatal("earlier drain request not seen")
	}

	// The request is for that registration: a later one of the same id
	// (a new agent) is not drained by it, only by a request of its own.
	g.Close(ctx)
	g2, err := f.reg.Register(ctx, node("a", discovery.StateReady), discovery.RegisterOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer g2.Close(ctx)
	drained = f.reg.DrainRequested(ctx, "a", g2.Node().Incarnation)
	select {
	case <-drained:
		t.Fatal("a new registration was drained by a request for the earlier one")
	case <-time.After(500 * time.Millisecond):
	}
	if err := f.reg.RequestDrain(ctx, "a", "test"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-drained:
	case <-time.After(5 * time.Second):
		t.Fatal("drain request for the new registration not seen")
	}
}

func TestWaitAcks(t *testing.T) {
	t.Parallel()
	f := setup(t)
	ctx := context.Background()
	n := node("a", discovery.StateJoining)
	n.Incarnation = 42
	// No clients: nothing to wait for.
	if pending, err := f.reg.WaitAcks(ctx, n, discovery.AckSubscribed); err != nil || len(pending) != 0 {
		t.Fatalf("WaitAcks with no clients = %v, %v", pending, err)
	}
	c1, err := f.reg.RegisterClient(ctx, discovery.ClientInfo{ID: "c1"}, 0)
	if err != nil {
		t.Fatal(err)
	}
	c2, _ := f.reg.RegisterClient(ctx, discovery.ClientInfo{ID: "c2"}, 0)
	done := make(chan []string, 1)
	go func() {
		p, _ := f.reg.WaitAcks(ctx, n, discovery.AckSubscribed)
		done <- p
	}()
	c1.Ack(ctx, "a", discovery.Ack{RunID: "r1", Incarnation: 42, State: discovery.AckSubscribed})
	c2.Ack(ctx, "a", discovery.Ack{RunID: "r1", Incarnation: 41, State: discovery.AckSubscribed})
	select {
	case <-done:
		t.Fatal("WaitAcks returned with c2's ack for an earlier registration")
	case <-time.After(500 * time.Millisecond):
	}
	c2.Close(ctx) // a client that leaves is no longer waited for
	select {
	case p := <-done:
		if len(p) != 0 {
			t.Fatalf("pending %v", p)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("WaitAcks did not return after the last client acked or left")
	}
	tctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	p, err := f.reg.WaitAcks(tctx, n, discovery.AckReleased)
	if err == nil || len(p) != 1 || p[0] != "c1" {
		t.Fatalf("WaitAcks(released) = %v, %v; want c1 pending and a timeout", p, err)
	}
	c1.Close(ctx)
}
