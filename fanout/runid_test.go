package fanout_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/pubmesh/pubmesh/discovery"
	"github.com/pubmesh/pubmesh/fanout"
	"github.com/pubmesh/pubmesh/internal/testredis"
)

// runID asks the redis-server at addr for its run_id.
func runID(t *testing.T, addr string) string {
	t.Helper()
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	defer rdb.Close()
	info, err := rdb.Info(context.Background(), "server").Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(l), "run_id:"); ok {
			return v
		}
	}
	t.Fatal("no run_id")
	return ""
}

// TestRestartedRedisTakesNoPublish: a node's Redis crashes and its agent
// restarts it on the same address before the registry says so; the new
// process has no subscriptions, so a publish it took would reach nobody.
// The client refuses that run (its run_id is not the registered one) and
// publishes elsewhere: the subscriber gets every message. (Before, go-redis
// reconnected to the new process and published there: chaos scenario 3 lost
// messages published after the crash.)
func TestRestartedRedisTakesNoPublish(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	var servers []*testredis.Server
	for i := range 2 {
		rs := testredis.New(t)
		servers = append(servers, rs)
		g, err := e.reg.Register(context.Background(), discovery.Node{
			ID: fmt.Sprintf("n%d", i+1), Addr: rs.Addr, State: discovery.StateReady, StartedAt: time.Now(), Version: "test", RunID: runID(t, rs.Addr),
		}, discovery.RegisterOptions{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { g.Close(context.Background()) })
	}
	pub := e.client(fanout.Config{})
	sub := e.client(fanout.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	s, err := sub.Subscribe(ctx, channels(64)...)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	// Warm up: the publisher has connections to both nodes.
	for _, ch := range channels(64) {
		if err := pub.Publish(ctx, ch, []byte("warm")); err != nil {
			t.Fatal(err)
		}
	}
	recv(t, s, 64, 30*time.Second)

	servers[0].Kill()
	if err := servers[0].Restart(); err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, ch := range channels(64) {
		if err := pub.Publish(ctx, ch, []byte("after")); err == nil {
			n++
		}
	}
	if n != 64 {
		t.Errorf("%d of 64 publishes succeeded after the restart, want all (on n2)", n)
	}
	got := recv(t, s, n, 30*time.Second)
	if len(got) != n {
		t.Errorf("received %d of %d messages published after the restart", len(got), n)
	}
}

func channels(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("ch%d", i)
	}
	return out
}
