package broker_test

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/pubmesh/pubmesh/internal/testredis"
	"github.com/pubmesh/pubmesh/pubmeshtest"
)

// infoField reads one numeric field of INFO section.
func infoField(ctx context.Context, t *testing.T, rdb *redis.Client, section, field string) int64 {
	t.Helper()
	info, err := rdb.Info(ctx, section).Result()
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.SplitSeq(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), field+":"); ok {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				t.Fatalf("INFO %s: %q", field, v)
			}
			return n
		}
	}
	t.Fatalf("INFO %s has no %s", section, field)
	return 0
}

// A node's Redis runs maxmemory-policy volatile-ttl (a child from its
// redis.conf, an attached Redis set by the agent): once full it evicts
// history streams, closest to expiry first, and the agent counts the
// evictions (pubmesh_node_history_evicted_keys_total, from INFO
// evicted_keys) and the keys (pubmesh_node_history_keys).
func TestNodeMemoryPolicyAndHistoryMetrics(t *testing.T) {
	t.Parallel()
	for _, attach := range []bool{false, true} {
		t.Run(map[bool]string{false: "child", true: "attached"}[attach], func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			reg := newRegistry(t)
			metrics := prometheus.NewRegistry()
			cfg := fastConfig(t, reg)
			cfg.Registerer = metrics
			if attach {
				srv := testredis.New(t)
				cfg.Attach = srv.Addr
			}
			a := start(t, cfg)
			waitReady(t, a)
			rdb := nodeClient(t, a.Addr(), cfg, nil)
			if got := rdb.ConfigGet(ctx, "maxmemory-policy").Val()["maxmemory-policy"]; got != "volatile-ttl" {
				t.Fatalf("maxmemory-policy %q, want volatile-ttl", got)
			}

			// Room for about 2 MiB of history, then 6 MiB of it.
			limit := infoField(ctx, t, rdb, "memory", "used_memory") + 2<<20
			pubmeshtest.ApplyConfig(t, reg, fmt.Sprintf("node: {maxmemory: %d}", limit))
			for t0 := time.Now(); rdb.ConfigGet(ctx, "maxmemory").Val()["maxmemory"] != fmt.Sprint(limit); {
				if time.Since(t0) > 5*time.Second {
					t.Fatalf("maxmemory %v, want %d", rdb.ConfigGet(ctx, "maxmemory").Val(), limit)
				}
				time.Sleep(10 * time.Millisecond)
			}
			payload := strings.Repeat("x", 16<<10)
			for i := range 400 {
				key := fmt.Sprintf("pm:h:c%d", i)
				// The later keys expire later: the earlier go first.
				if err := rdb.Do(ctx, "XADD", key, "*", "m", payload, "pt", "0", "r", "1").Err(); err != nil {
					t.Fatalf("XADD %s: %v", key, err)
				}
				if err := rdb.PExpire(ctx, key, time.Hour+time.Duration(i)*time.Second).Err(); err != nil {
					t.Fatal(err)
				}
			}
			evicted := infoField(ctx, t, rdb, "stats", "evicted_keys")
			keys := rdb.DBSize(ctx).Val()
			if evicted == 0 || keys >= 400 {
				t.Fatalf("evicted %d keys, %d left: the node did not evict", evicted, keys)
			}
			if rdb.Exists(ctx, "pm:h:c399").Val() != 1 || rdb.Exists(ctx, "pm:h:c0").Val() != 0 {
				t.Error("volatile-ttl evicts the keys closest to expiry first: pm:h:c0 should be gone, pm:h:c399 kept")
			}
			// Redis may evict a few more as its memory settles: compare the
			// metrics with INFO while both stay put.
			for t0 := time.Now(); ; time.Sleep(20 * time.Millisecond) {
				ev, k := infoField(ctx, t, rdb, "stats", "evicted_keys"), rdb.DBSize(ctx).Val()
				e, g := gathered(t, metrics, "pubmesh_node_history_evicted_keys_total"), gathered(t, metrics, "pubmesh_node_history_keys")
				if e == float64(ev) && g == float64(k) && ev == infoField(ctx, t, rdb, "stats", "evicted_keys") && k == rdb.DBSize(ctx).Val() {
					break
				}
				if time.Since(t0) > 10*time.Second {
					t.Fatalf("evicted_keys_total %v, keys %v; INFO says %d, %d", e, g, ev, k)
				}
			}
		})
	}
}
