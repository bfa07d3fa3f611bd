package broker_test

import (
	"context"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/pubmesh/pubmesh/broker"
	"github.com/pubmesh/pubmesh/discovery"
	"github.com/pubmesh/pubmesh/internal/testredis"
	"github.com/pubmesh/pubmesh/pubmeshtest"
)

// redisLimits is what a node's Redis runs: the pubsub class of
// client-output-buffer-limit ("HARD SOFT SECONDS", "" when it cannot be
// read, as with a pub/sub-only ACL user) and maxmemory (read from INFO
// memory, which every user may read).
type redisLimits struct {
	limit     string
	maxMemory string
}

func readLimits(ctx context.Context, rdb *redis.Client, canConfig bool) (redisLimits, error) {
	var l redisLimits
	info, err := rdb.Info(ctx, "memory").Result()
	if err != nil {
		return l, err
	}
	for line := range strings.SplitSeq(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "maxmemory:"); ok {
			l.maxMemory = v
		}
	}
	if !canConfig {
		return l, nil
	}
	cobl, err := rdb.ConfigGet(ctx, "client-output-buffer-limit").Result()
	if err != nil {
		return l, err
	}
	_, l.limit, _ = strings.Cut(cobl["client-output-buffer-limit"], "pubsub ")
	return l, nil
}

// gathered returns the value of the metric name (with any labels) in reg,
// or -1 when there is none.
func gathered(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name || len(mf.Metric) == 0 {
			continue
		}
		m := mf.Metric[0]
		switch {
		case m.Gauge != nil:
			return m.Gauge.GetValue()
		case m.Counter != nil:
			return m.Counter.GetValue()
		}
	}
	return -1
}

// registeredRevision is the node's ConfigRevision as etcd holds it.
func registeredRevision(t *testing.T, reg *discovery.Registry, id string) int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	nodes, _, err := reg.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		if n.ID == id {
			return n.ConfigRevision
		}
	}
	return -1
}

// The agent applies the cluster configuration's node section to its Redis
// live (CONFIG SET, within 1s, no restart), records the revision in its
// registration and its gauge, lets its Config's overrides win, gives a
// restarted child the values in force, and ignores a bad document.
func TestAgentFollowsClusterConfig(t *testing.T) {
	t.Parallel()
	const (
		first  = "node: {output_buffer_limit: 32mb 8mb 30, maxmemory: 100mb}"
		second = "node: {output_buffer_limit: 48mb 12mb 45, maxmemory: 200mb}"
	)
	for _, tc := range []struct {
		name    string
		attach  bool  // an attached Redis instead of a child
		user    bool  // a pub/sub-only ACL user: CONFIG goes through the agent's own
		limit   bool  // Config.OutputBufferLimit overrides
		maxMem  int64 // Config.MaxMemory
		restart bool  // kill the child and check the new one
		want1   redisLimits
		want2   redisLimits
	}{
		{
			name: "child", restart: true,
			want1: redisLimits{"33554432 8388608 30", "104857600"},
			want2: redisLimits{"50331648 12582912 45", "209715200"},
		},
		{
			name: "attached", attach: true,
			want1: redisLimits{"33554432 8388608 30", "104857600"},
			want2: redisLimits{"50331648 12582912 45", "209715200"},
		},
		{
			name: "ACL user", user: true,
			want1: redisLimits{"", "104857600"},
			want2: redisLimits{"", "209715200"},
		},
		{
			name: "overrides win", limit: true, maxMem: 64 << 20, restart: true,
			want1: redisLimits{"1048576 524288 5", "67108864"},
			want2: redisLimits{"1048576 524288 5", "67108864"},
		},
		{
			name: "no memory limit forced", maxMem: -1,
			want1: redisLimits{"33554432 8388608 30", "0"},
			want2: redisLimits{"50331648 12582912 45", "0"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			reg := newRegistry(t)
			rev1 := pubmeshtest.ApplyConfig(t, reg, first)
			metrics := prometheus.NewRegistry()
			cfg := fastConfig(t, reg)
			cfg.Registerer = metrics
			cfg.MaxMemory = tc.maxMem
			if tc.limit {
				cfg.OutputBufferLimit = broker.BufferLimit{Hard: 1 << 20, Soft: 512 << 10, SoftFor: 5 * time.Second}
			}
			opts := &redis.Options{MaxRetries: -1, DisableIdentity: true}
			if tc.attach {
				srv := testredis.New(t)
				cfg.Attach = srv.Addr
			}
			if tc.user {
				cfg.Username, cfg.Password = "app", "app-pw-1e2f"
				opts.Username, opts.Password = cfg.Username, cfg.Password
			}
			var logs *syncBuffer
			cfg.Logger, logs = testLogs(t)
			a := start(t, cfg)
			select {
			case <-a.Ready():
			case <-time.After(20 * time.Second):
				t.Fatal("not ready")
			}
			opts.Addr = a.Addr()
			rdb := redis.NewClient(opts)
			t.Cleanup(func() { rdb.Close() })
			check := func(what string, want redisLimits, within time.Duration) {
				t.Helper()
				t0 := time.Now()
				for {
					got, err := readLimits(ctx, rdb, !tc.user)
					if err == nil && got == want {
						return
					}
					if time.Since(t0) > within {
						t.Fatalf("%s: Redis runs %+v (err %v), want %+v after %s", what, got, err, want, within)
					}
					time.Sleep(10 * time.Millisecond)
				}
			}
			follows := func(what string, rev int64, within time.Duration) {
				t.Helper()
				t0 := time.Now()
				for registeredRevision(t, reg, cfg.ID) != rev || a.Node().ConfigRevision != rev {
					if time.Since(t0) > within {
						t.Fatalf("%s: registered config revision %d, want %d after %s", what, registeredRevision(t, reg, cfg.ID), rev, within)
					}
					time.Sleep(10 * time.Millisecond)
				}
				if v := gathered(t, metrics, "pubmesh_config_revision"); v != float64(rev) {
					t.Errorf("%s: pubmesh_config_revision = %v, want %d", what, v, rev)
				}
			}

			check("at start", tc.want1, 0)
			follows("at start", rev1, 0)
			pid := a.PID()

			t0 := time.Now()
			rev2 := pubmeshtest.ApplyConfig(t, reg, second)
			check("after a change", tc.want2, time.Second)
			follows("after a change", rev2, time.Second)
			t.Logf("revision %d applied and registered in %s", rev2, time.Since(t0).Round(time.Millisecond))
			if a.PID() != pid {
				t.Errorf("the child was restarted (pid %d, now %d): a change must apply live", pid, a.PID())
			}
			if v := gathered(t, metrics, "pubmesh_node_config_apply_errors_total"); v != 0 {
				t.Errorf("pubmesh_node_config_apply_errors_total = %v, want 0", v)
			}
			for key, overridden := range map[string]bool{"node.output_buffer_limit": tc.limit, "node.maxmemory": tc.maxMem != 0} {
				line := fmt.Sprintf(`msg="config: flag overrides the cluster configuration" node=%s key=%s`, cfg.ID, key)
				if n := strings.Count(logs.String(), line); n != map[bool]int{true: 1}[overridden] {
					t.Errorf("%d log lines %q, want one only if overridden (%v)", n, line, overridden)
				}
			}

			// Garbage written behind pubmesh config's back is ignored and
			// counted.
			if _, err := reg.Client().Put(ctx, "/pubmesh/"+reg.Cluster()+"/config", "node: {maxmemory: [not a size"); err != nil {
				t.Fatal(err)
			}
			t0 = time.Now()
			for gathered(t, metrics, "pubmesh_config_invalid_total") != 1 {
				if time.Since(t0) > time.Second {
					t.Fatalf("pubmesh_config_invalid_total = %v after 1s, want 1", gathered(t, metrics, "pubmesh_config_invalid_total"))
				}
				time.Sleep(10 * time.Millisecond)
			}
			check("after garbage", tc.want2, 0)
			follows("after garbage", rev2, 0)

			if !tc.restart {
				return
			}
			// A child that crashed comes back with the values in force.
			if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			t0 = time.Now()
			for a.PID() == 0 || a.PID() == pid || a.State() != discovery.StateReady {
				if time.Since(t0) > 20*time.Second {
					t.Fatal("the child was not restarted")
				}
				time.Sleep(10 * time.Millisecond)
			}
			rdb.Close()
			rdb = redis.NewClient(opts)
			check("after a restart", tc.want2, 0)
			follows("after a restart", rev2, 0)
		})
	}
}

// A CONFIG SET that fails (here: an attached Redis whose user may not use
// CONFIG) does not stop the node; it is logged, counted and retried until
// it works, and only then is the revision recorded.
func TestAgentRetriesFailedConfigApply(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	srv := testredis.New(t)
	admin := redis.NewClient(&redis.Options{Addr: srv.Addr, MaxRetries: -1, DisableIdentity: true})
	defer admin.Close()
	if err := admin.Do(ctx, "ACL", "SETUSER", "watcher", "on", ">watcher-pw", "~*", "&*", "+@all", "-config").Err(); err != nil {
		t.Fatal(err)
	}
	reg := newRegistry(t)
	metrics := prometheus.NewRegistry()
	cfg := fastConfig(t, reg)
	cfg.Attach, cfg.Username, cfg.Password = srv.Addr, "watcher", "watcher-pw"
	cfg.Registerer = metrics
	var logs *syncBuffer
	cfg.Logger, logs = testLogs(t)
	a := start(t, cfg)
	select {
	case <-a.Ready():
	case <-time.After(20 * time.Second):
		t.Fatal("a node whose limits cannot be set must still turn ready")
	}
	rev := pubmeshtest.ApplyConfig(t, reg, "node: {maxmemory: 300mb}")
	t0 := time.Now()
	for gathered(t, metrics, "pubmesh_node_config_apply_errors_total") < 2 {
		if time.Since(t0) > 5*time.Second {
			t.Fatalf("apply errors = %v, want the failure at start and the one of revision %d", gathered(t, metrics, "pubmesh_node_config_apply_errors_total"), rev)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if !strings.Contains(logs.String(), `msg="cannot apply the cluster configuration to redis; retrying"`) {
		t.Error("the failure is not logged")
	}
	if got := registeredRevision(t, reg, cfg.ID); got == rev {
		t.Errorf("revision %d registered although the Redis does not run it", rev)
	}

	if err := admin.Do(ctx, "ACL", "SETUSER", "watcher", "+config").Err(); err != nil {
		t.Fatal(err)
	}
	t0 = time.Now()
	for registeredRevision(t, reg, cfg.ID) != rev {
		// The retry backoff is 1s doubling; two or three of them.
		if time.Since(t0) > 10*time.Second {
			t.Fatalf("revision %d not applied after CONFIG was allowed; registered %d", rev, registeredRevision(t, reg, cfg.ID))
		}
		time.Sleep(20 * time.Millisecond)
	}
	if mm, err := admin.ConfigGet(ctx, "maxmemory").Result(); err != nil || mm["maxmemory"] != "314572800" {
		t.Errorf("maxmemory = %v (%v), want 314572800", mm, err)
	}
}
