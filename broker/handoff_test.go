package broker_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/pubmesh/pubmesh/broker"
	"github.com/pubmesh/pubmesh/discovery"
	"github.com/pubmesh/pubmesh/internal/devcerts"
	"github.com/pubmesh/pubmesh/internal/testredis"
	"github.com/pubmesh/pubmesh/internal/testsec"
)

// A run id of a node drained long ago, whose stream this node adopted.
const oldRun = "0123456789abcdef0123456789abcdef01234567"

// nodeClient is a Redis client of addr with the node's credentials, as a
// fanout client connects.
func nodeClient(t *testing.T, addr string, cfg broker.Config, tc *tls.Config) *redis.Client {
	t.Helper()
	rdb := redis.NewClient(&redis.Options{
		Addr: addr, Username: cfg.Username, Password: cfg.Password, TLSConfig: tc,
		MaxRetries: -1, DisableIdentity: true, DialTimeout: 5 * time.Second,
	})
	t.Cleanup(func() { rdb.Close() })
	return rdb
}

// addHistory appends n entries to key as the publish script does (fields m,
// pt, r; ids from Redis, or ids[i] when given) and gives the key ttl.
func addHistory(ctx context.Context, t *testing.T, rdb *redis.Client, key string, n int, ttl time.Duration, ids ...string) {
	t.Helper()
	pipe := rdb.Pipeline()
	for i := range n {
		id := "*"
		if i < len(ids) {
			id = ids[i]
		}
		pipe.Do(ctx, "XADD", key, id, "m", fmt.Sprintf("envelope+payload %s %d", key, i), "pt", fmt.Sprint(1700000000000+i), "r", "1")
	}
	pipe.PExpire(ctx, key, ttl)
	if _, err := pipe.Exec(ctx); err != nil {
		t.Fatalf("history of %s: %v", key, err)
	}
}

// historyRun is the record of runID in the registry.
func historyRun(t *testing.T, reg *discovery.Registry, runID string) (discovery.HistoryRun, bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	runs, err := reg.HistoryRuns(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range runs {
		if r.RunID == runID {
			return r, true
		}
	}
	return discovery.HistoryRun{}, false
}

func waitReady(t *testing.T, agents ...*started) {
	t.Helper()
	for _, a := range agents {
		select {
		case <-a.Ready():
		case <-time.After(20 * time.Second):
			t.Fatalf("node %s not ready", a.ID())
		}
	}
}

// A drain copies the node's history streams (its own two channels and a
// stream it adopted earlier) to the other ready node before it leaves:
// entries and ids unchanged, the TTL they had left, listed in the target's
// pm:hx sets (whose TTL only grows), and its run is marked handed off. It
// works with the nodes' shared credentials: no authentication, an ACL user
// (the agent reads its own node as its own user, and writes to the other
// as the clients' user), and mutual TLS with the peers' TLS derived from
// the node's own settings.
func TestDrainHandsOffHistory(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		user bool // an ACL user (the clients' user, and the agent's own)
		tls  bool // mutual TLS
	}{
		{name: "plain"},
		{name: "ACL user", user: true},
		{name: "mutual TLS and ACL user", user: true, tls: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			reg := newRegistry(t)
			metrics := prometheus.NewRegistry()
			cfgA, cfgB := fastConfig(t, reg), fastConfig(t, reg)
			cfgA.Registerer = metrics
			cfgA.DrainTimeout = time.Minute // a bound, not a speed: the hand-off must finish
			var clientTLS *tls.Config
			var certs devcerts.Set
			if tc.tls {
				var err error
				// One CA for the cluster; both nodes serve its certificate
				// for 127.0.0.1.
				if certs, err = devcerts.Generate(filepath.Join(t.TempDir(), "tls"), devcerts.Options{}); err != nil {
					t.Fatal(err)
				}
				clientTLS = testsec.Client(t, certs.CA, certs.Client)
			}
			for _, c := range []*broker.Config{&cfgA, &cfgB} {
				if tc.user {
					c.Username, c.Password = "app", "app-pw-8c1e"
				}
				if tc.tls {
					c.TLSCertFile, c.TLSKeyFile, c.TLSClientCAFile = certs.Redis.Cert, certs.Redis.Key, certs.CA
				}
			}
			var logs *syncBuffer
			cfgA.Logger, logs = testLogs(t)
			a, b := start(t, cfgA), start(t, cfgB)
			waitReady(t, a, b)
			ra, rb := nodeClient(t, a.Addr(), cfgA, clientTLS), nodeClient(t, b.Addr(), cfgB, clientTLS)
			runA, runB := a.Node().RunID, b.Node().RunID

			addHistory(ctx, t, ra, "pm:h:chat.a", 3, 10*time.Minute)
			addHistory(ctx, t, ra, "pm:h:chat.b", 2500, 20*time.Minute) // three chunks
			adopted := "pm:ha:" + oldRun + ":chat.a"
			addHistory(ctx, t, ra, adopted, 2, 5*time.Minute, "1-1", "2-1")
			if err := ra.SAdd(ctx, "pm:hx:chat.a", adopted).Err(); err != nil {
				t.Fatal(err)
			}
			// The target already adopted a stream of chat.a from a third
			// node, listed for an hour: the hand-off must not shorten that.
			other := "pm:ha:fedcba9876543210fedcba9876543210fedcba98:chat.a"
			if err := rb.SAdd(ctx, "pm:hx:chat.a", other).Err(); err != nil {
				t.Fatal(err)
			}
			if err := rb.PExpire(ctx, "pm:hx:chat.a", time.Hour).Err(); err != nil {
				t.Fatal(err)
			}
			if !tc.user {
				// Not history: left alone.
				if err := ra.Set(ctx, "other", "x", 0).Err(); err != nil {
					t.Fatal(err)
				}
				if err := ra.XAdd(ctx, &redis.XAddArgs{Stream: "events", Values: []string{"a", "b"}}).Err(); err != nil {
					t.Fatal(err)
				}
			}
			copies := map[string]string{ // source key → key on the target
				"pm:h:chat.a": "pm:ha:" + runA + ":chat.a",
				"pm:h:chat.b": "pm:ha:" + runA + ":chat.b",
				adopted:       adopted,
			}
			want := map[string][]redis.XMessage{}
			wantTTL := map[string]time.Duration{}
			for src := range copies {
				msgs, err := ra.XRange(ctx, src, "-", "+").Result()
				if err != nil {
					t.Fatal(err)
				}
				want[src] = msgs
				wantTTL[src], _ = ra.PTTL(ctx, src).Result()
			}

			t0 := time.Now()
			if err := a.Shutdown(ctx); err != nil {
				t.Fatalf("Shutdown: %v", err)
			}
			t.Logf("drained with hand-off in %s", time.Since(t0).Round(time.Millisecond))

			for src, dst := range copies {
				got, err := rb.XRange(ctx, dst, "-", "+").Result()
				if err != nil {
					t.Fatal(err)
				}
				if !reflect.DeepEqual(got, want[src]) {
					t.Errorf("%s on the target: %d entries (first %v), want %s's %d entries (first %v), same ids and fields",
						dst, len(got), first(got), src, len(want[src]), first(want[src]))
				}
				ttl, err := rb.PTTL(ctx, dst).Result()
				if err != nil {
					t.Fatal(err)
				}
				// What the source had left when read, minus the drain.
				if ttl > wantTTL[src] || ttl < wantTTL[src]-time.Since(t0)-5*time.Second {
					t.Errorf("%s: TTL %s, want the %s the source had left", dst, ttl, wantTTL[src])
				}
			}
			for set, members := range map[string][]string{
				"pm:hx:chat.a": {copies[adopted], copies["pm:h:chat.a"], other},
				"pm:hx:chat.b": {copies["pm:h:chat.b"]},
			} {
				got, err := rb.SMembers(ctx, set).Result()
				if err != nil {
					t.Fatal(err)
				}
				slices.Sort(got)
				slices.Sort(members)
				if !slices.Equal(got, members) {
					t.Errorf("%s on the target: %v, want %v", set, got, members)
				}
			}
			if ttl := rb.PTTL(ctx, "pm:hx:chat.a").Val(); ttl < 50*time.Minute {
				t.Errorf("pm:hx:chat.a TTL %s: shortened from 1h", ttl)
			}
			if ttl := rb.PTTL(ctx, "pm:hx:chat.b").Val(); ttl < rb.PTTL(ctx, copies["pm:h:chat.b"]).Val() {
				t.Errorf("pm:hx:chat.b TTL %s: expires before the stream it lists", ttl)
			}
			if n := rb.Exists(ctx, "other", "events").Val(); n != 0 {
				t.Errorf("%d keys that are not history were copied", n)
			}

			if r, ok := historyRun(t, reg, runA); !ok || !r.Ended() || !r.HandedOff || r.Node != cfgA.ID {
				t.Errorf("run of the drained node: %+v (recorded %v), want ended and handed off", r, ok)
			}
			if r, ok := historyRun(t, reg, runB); !ok || r.Ended() {
				t.Errorf("run of the target: %+v (recorded %v), want running", r, ok)
			}
			for name, v := range map[string]float64{
				"pubmesh_node_history_handoff_streams_total": 3,
				"pubmesh_node_history_handoff_entries_total": 3 + 2500 + 2,
				"pubmesh_node_history_handoff_errors_total":  0,
			} {
				if got := gathered(t, metrics, name); got != v {
					t.Errorf("%s = %v, want %v", name, got, v)
				}
			}
			if !strings.Contains(logs.String(), `msg="history handed off"`) {
				t.Error("the hand-off is not logged")
			}
		})
	}
}

func first(msgs []redis.XMessage) any {
	if len(msgs) == 0 {
		return nil
	}
	return msgs[0]
}

// With no other ready node (the last one drains) the history has nowhere to
// go: the run ends without hand-off, counted and logged. A node without
// history hands off nothing and loses nothing: its run ends handed off.
// A node stopped without a drain (Run's context cancelled) loses its
// history: its run ends, not handed off.
func TestHandOffWithoutPeers(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name      string
		streams   int
		drain     bool
		handedOff bool
		errors    float64
		log       string
	}{
		{"last node with history", 2, true, false, 2, "history not handed off: no other ready node"},
		{"no history", 0, true, true, 0, "history handed off"},
		{"stopped without a drain", 2, false, false, 0, "history run ended"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			reg := newRegistry(t)
			metrics := prometheus.NewRegistry()
			cfg := fastConfig(t, reg)
			cfg.Registerer = metrics
			var logs *syncBuffer
			cfg.Logger, logs = testLogs(t)
			a, err := broker.New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			rctx, stop := context.WithCancel(ctx)
			defer stop()
			errc := make(chan error, 1)
			go func() { errc <- a.Run(rctx) }()
			t.Cleanup(func() { a.Shutdown(context.Background()) })
			select {
			case <-a.Ready():
			case <-time.After(20 * time.Second):
				t.Fatal("not ready")
			}
			run := a.Node().RunID
			rdb := nodeClient(t, a.Addr(), cfg, nil)
			for i := range tc.streams {
				addHistory(ctx, t, rdb, fmt.Sprintf("pm:h:c%d", i), 5, time.Minute)
			}
			if tc.drain {
				if err := a.Shutdown(ctx); err != nil {
					t.Fatal(err)
				}
			} else {
				stop()
				<-a.Done()
			}
			<-errc
			r, ok := historyRun(t, reg, run)
			if !ok || !r.Ended() || r.HandedOff != tc.handedOff {
				t.Errorf("run %+v (recorded %v), want ended, handed_off %v", r, ok, tc.handedOff)
			}
			if got := gathered(t, metrics, "pubmesh_node_history_handoff_errors_total"); got != tc.errors {
				t.Errorf("handoff errors = %v, want %v", got, tc.errors)
			}
			if !strings.Contains(logs.String(), tc.log) {
				t.Errorf("no log line %q", tc.log)
			}
		})
	}
}

// A ready node that does not answer (it died, and its key has not expired
// yet) is skipped: the streams that hash to it go to the next ready node,
// and the hand-off is complete.
func TestHandOffSkipsUnreachableNode(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	reg := newRegistry(t)
	dead, err := reg.Register(ctx, discovery.Node{
		ID: "dead", Addr: fmt.Sprintf("127.0.0.1:%d", freePort(t)), State: discovery.StateReady,
		StartedAt: time.Now().UTC(), Version: "test", RunID: oldRun,
	}, discovery.RegisterOptions{TTL: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dead.Close(context.Background()) })
	cfgA, cfgB := fastConfig(t, reg), fastConfig(t, reg)
	cfgA.DrainTimeout = time.Minute
	var logs *syncBuffer
	cfgA.Logger, logs = testLogs(t)
	a, b := start(t, cfgA), start(t, cfgB)
	waitReady(t, a, b)
	ra, rb := nodeClient(t, a.Addr(), cfgA, nil), nodeClient(t, b.Addr(), cfgB, nil)
	runA := a.Node().RunID
	const channels = 10
	for i := range channels {
		addHistory(ctx, t, ra, fmt.Sprintf("pm:h:c%d", i), 2, time.Minute)
	}
	if err := a.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	for i := range channels {
		if n := rb.XLen(ctx, fmt.Sprintf("pm:ha:%s:c%d", runA, i)).Val(); n != 2 {
			t.Errorf("channel c%d: %d entries on the live node, want 2", i, n)
		}
	}
	if r, ok := historyRun(t, reg, runA); !ok || !r.HandedOff {
		t.Errorf("run %+v (recorded %v), want handed off", r, ok)
	}
	if !strings.Contains(logs.String(), "trying another node") {
		t.Error("no stream was tried on the unreachable node first; the test proves nothing")
	}
}

// An attached Redis outlives its agent. A drain that handed its history off
// keeps its run open, so the next agent (a rolling restart of agents)
// registers the same run again. A drain that could not (no other node) ends
// the run as lost, and a later agent registers a new life of the run, so
// the loss stays recorded and the new life is watched again.
func TestAttachedDrainAndRun(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		peer  bool
		ended bool
	}{
		{"handed off", true, false},
		{"not handed off", false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			reg := newRegistry(t)
			srv := testredis.New(t)
			cfg := fastConfig(t, reg)
			cfg.Attach = srv.Addr
			if tc.peer {
				waitReady(t, start(t, fastConfig(t, reg)))
			}
			a := start(t, cfg)
			waitReady(t, a)
			run := a.Node().RunID
			addHistory(ctx, t, nodeClient(t, srv.Addr, cfg, nil), "pm:h:chat.a", 3, time.Minute)
			if err := a.Shutdown(ctx); err != nil {
				t.Fatal(err)
			}
			if r, ok := historyRun(t, reg, run); !ok || r.Ended() != tc.ended || r.HandedOff {
				t.Errorf("run after the drain: %+v (recorded %v), want ended %v, not handed off", r, ok, tc.ended)
			}

			// A new agent on the same attached Redis registers it again in
			// both cases; after an incomplete hand-off the run gets a new
			// life, and the ended one stays ended (recoveries across it say
			// recovered:false).
			again := start(t, cfg)
			select {
			case <-again.Ready():
			case <-time.After(20 * time.Second):
				t.Fatal("a new agent on the same attached Redis did not turn ready")
			}
			if again.Node().RunID != run {
				t.Errorf("run %s, want %s", again.Node().RunID, run)
			}
			runs, err := reg.HistoryRuns(ctx)
			if err != nil {
				t.Fatal(err)
			}
			var lives, open int
			for _, r := range runs {
				if r.RunID == run {
					lives++
					if !r.Ended() {
						open++
					}
				}
			}
			if want := map[bool]int{true: 2, false: 1}[tc.ended]; lives != want || open != 1 {
				t.Errorf("%d lives of the run (%d open), want %d (1 open): %+v", lives, open, want, runs)
			}
		})
	}
}
