package fanout_test

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/pubmesh/pubmesh/discovery"
	"github.com/pubmesh/pubmesh/fanout"
	"github.com/pubmesh/pubmesh/internal/embedetcd"
	"github.com/pubmesh/pubmesh/internal/testredis"
)

func newPresence(t testing.TB, c *fanout.Client, opts fanout.PresenceOptions) *fanout.Presence {
	t.Helper()
	p, err := c.NewPresence(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close(context.Background()) })
	return p
}

func clientsOf(list []fanout.PresenceEntry) []string {
	out := make([]string, len(list))
	for i, e := range list {
		out[i] = e.Client
	}
	return out
}

// Two gateways' entries make one presence: listed once each, with their
// fields; stats count entries and distinct non-empty subjects; a second
// Add of the same client is not a join; Remove takes it out.
func TestPresenceAcrossGateways(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.node("n1", discovery.StateReady)
	e.node("n2", discovery.StateReady)
	g1 := newPresence(t, e.client(fanout.Config{ID: "gw1"}), fanout.PresenceOptions{})
	g2 := newPresence(t, e.client(fanout.Config{ID: "gw2"}), fanout.PresenceOptions{})
	ctx := context.Background()
	since := time.Now().UTC().Truncate(time.Millisecond)
	add := func(p *fanout.Presence, client, user string, wantJoin bool) {
		t.Helper()
		joined, err := p.Add(ctx, "room", fanout.PresenceEntry{Client: client, User: user, Since: since, Info: json.RawMessage(`{"name":"` + client + `"}`)})
		if err != nil || joined != wantJoin {
			t.Fatalf("Add %s = %v, %v; want joined %v", client, joined, err, wantJoin)
		}
	}
	add(g1, "c1", "alice", true)
	add(g1, "c2", "bob", true)
	add(g2, "c3", "alice", true)
	add(g2, "c4", "", true) // anonymous: an entry, not a user
	add(g2, "c3", "alice", false)

	list, err := g2.List(ctx, "room")
	if err != nil {
		t.Fatal(err)
	}
	if got := clientsOf(list); fmt.Sprint(got) != "[c1 c2 c3 c4]" {
		t.Fatalf("List = %v", got)
	}
	if c1 := list[0]; c1.User != "alice" || c1.Gateway != "gw1" || !c1.Since.Equal(since) || string(c1.Info) != `{"name":"c1"}` {
		t.Errorf("c1 = %+v", c1)
	}
	st, err := g1.Stats(ctx, "room")
	if err != nil || st != (fanout.PresenceStats{Clients: 4, Users: 2}) {
		t.Fatalf("Stats = %+v, %v; want 4 clients, 2 users", st, err)
	}
	if left, err := g1.Remove(ctx, "room", "c1"); err != nil || !left {
		t.Fatalf("Remove c1 = %v, %v", left, err)
	}
	if left, err := g1.Remove(ctx, "room", "c1"); err != nil || left {
		t.Fatalf("second Remove c1 = %v, %v; want not there", left, err)
	}
	st, _ = g1.Stats(ctx, "room")
	if st != (fanout.PresenceStats{Clients: 3, Users: 2}) { // alice still has c3
		t.Errorf("after c1 left: %+v", st)
	}
	g2.Remove(ctx, "room", "c3")
	if st, _ = g1.Stats(ctx, "room"); st != (fanout.PresenceStats{Clients: 2, Users: 1}) {
		t.Errorf("after c3 left: %+v", st)
	}
	if st, _ := g1.Stats(ctx, "empty"); st != (fanout.PresenceStats{}) {
		t.Errorf("empty channel: %+v", st)
	}
	if _, err := g1.Add(ctx, "room", fanout.PresenceEntry{Client: "big", Info: make(json.RawMessage, fanout.MaxPresenceInfo+1)}); err == nil {
		t.Error("Add took info over MaxPresenceInfo")
	}
}

// A gateway that stops refreshing (its process died: here its fanout
// client closes without removing anything) loses its entries within the
// TTL, and the gateway that prunes them from the channel's home reports
// each once, for leave events.
func TestPresenceExpiresWithoutRefresh(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.node("n1", discovery.StateReady)
	const ttl = 1500 * time.Millisecond
	var mu sync.Mutex
	var expired []string
	g1 := newPresence(t, e.client(fanout.Config{ID: "gw1"}), fanout.PresenceOptions{TTL: ttl, OnExpire: func(ch string, pe fanout.PresenceEntry) {
		mu.Lock()
		defer mu.Unlock()
		expired = append(expired, ch+"/"+pe.Client)
	}})
	c2 := e.client(fanout.Config{ID: "gw2"})
	g2, err := c2.NewPresence(fanout.PresenceOptions{TTL: ttl})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	g1.Add(ctx, "room", fanout.PresenceEntry{Client: "a", User: "u1"})
	g2.Add(ctx, "room", fanout.PresenceEntry{Client: "b", User: "u2"})
	g2.Add(ctx, "room", fanout.PresenceEntry{Client: "c", User: "u2"})
	// Past the TTL, refreshes keep both gateways' entries.
	time.Sleep(2 * ttl)
	if st, _ := g1.Stats(ctx, "room"); st != (fanout.PresenceStats{Clients: 3, Users: 2}) {
		t.Fatalf("refreshed entries: %+v", st)
	}
	c2.Close() // no Presence.Close: nothing removed, refreshes stop
	start := time.Now()
	for {
		st, err := g1.Stats(ctx, "room")
		if err == nil && st == (fanout.PresenceStats{Clients: 1, Users: 1}) {
			break
		}
		if time.Since(start) > 2*ttl {
			t.Fatalf("gw2's entries still there %s after it stopped: %+v %v", time.Since(start), st, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("gw2's entries gone %s after it stopped (ttl %s)", time.Since(start).Round(10*time.Millisecond), ttl)
	mu.Lock()
	defer mu.Unlock()
	sort.Strings(expired)
	if fmt.Sprint(expired) != "[room/b room/c]" {
		t.Errorf("expired reported: %v, want room/b and room/c once each", expired)
	}
}

// Nodes joining and draining move each channel's entries to its new
// home: every read during and after the change finds each entry once, and
// once settled each entry is on exactly one node.
func TestPresenceMembershipChange(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	s1, _ := e.node("n1", discovery.StateReady)
	g1 := newPresence(t, e.client(fanout.Config{ID: "gw1"}), fanout.PresenceOptions{TTL: 3 * time.Second})
	g2 := newPresence(t, e.client(fanout.Config{ID: "gw2"}), fanout.PresenceOptions{TTL: 3 * time.Second})
	ctx := context.Background()
	const channels, per = 24, 5
	want := map[string][]string{}
	for i := range channels {
		ch := fmt.Sprintf("ch%d", i)
		for j := range per {
			p, id := g1, fmt.Sprintf("a%d", j)
			if j%2 == 1 {
				p, id = g2, fmt.Sprintf("b%d", j)
			}
			if _, err := p.Add(ctx, ch, fanout.PresenceEntry{Client: id, User: id}); err != nil {
				t.Fatal(err)
			}
			want[ch] = append(want[ch], id)
		}
		sort.Strings(want[ch])
	}
	check := func(stage string) {
		t.Helper()
		for ch, w := range want {
			list, err := g1.List(ctx, ch)
			if err != nil {
				t.Fatalf("%s: List %s: %v", stage, ch, err)
			}
			if fmt.Sprint(clientsOf(list)) != fmt.Sprint(w) {
				t.Fatalf("%s: %s has %v, want %v", stage, ch, clientsOf(list), w)
			}
			if st, err := g2.Stats(ctx, ch); err != nil || st.Clients != per || st.Users != per {
				t.Fatalf("%s: Stats %s = %+v, %v", stage, ch, st, err)
			}
		}
	}
	// onNodes counts entries as stored, node by node: a settled move
	// leaves each entry on one node only.
	servers := []*testredis.Server{s1}
	settled := func(stage string) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			total, moved := 0, 0
			for _, s := range servers {
				rdb := redis.NewClient(&redis.Options{Addr: s.Addr})
				for ch := range want {
					n, _ := rdb.ZCard(ctx, "pm:pm:"+ch).Result()
					total += int(n)
					if n > 0 && s != servers[0] {
						moved++
					}
				}
				rdb.Close()
			}
			if total == channels*per {
				t.Logf("%s: %d entries, %d channels off n1", stage, total, moved)
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: %d entries stored over the nodes, want %d", stage, total, channels*per)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	check("one node")
	settled("one node")

	s2, reg2 := e.node("n2", discovery.StateJoining)
	servers = append(servers, s2)
	check("n2 joining")
	if err := reg2.SetState(ctx, discovery.StateReady); err != nil {
		t.Fatal(err)
	}
	for range 20 { // reads while the entries move
		check("n2 ready")
		time.Sleep(10 * time.Millisecond)
	}
	settled("n2 ready")
	rdb := redis.NewClient(&redis.Options{Addr: s2.Addr})
	defer rdb.Close()
	onN2 := 0
	for ch := range want {
		if n, _ := rdb.ZCard(ctx, "pm:pm:"+ch).Result(); n > 0 {
			onN2++
		}
	}
	if onN2 == 0 || onN2 == channels {
		t.Fatalf("%d of %d channels moved to n2; want some", onN2, channels)
	}

	if err := reg2.SetState(ctx, discovery.StateDraining); err != nil {
		t.Fatal(err)
	}
	for range 20 {
		check("n2 draining")
		time.Sleep(10 * time.Millisecond)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		left := 0
		for ch := range want {
			n, _ := rdb.ZCard(ctx, "pm:pm:"+ch).Result()
			left += int(n)
		}
		if left == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d entries still on draining n2", left)
		}
		time.Sleep(50 * time.Millisecond)
	}
	reg2.Close(ctx)
	servers = servers[:1]
	check("n2 gone")
	settled("n2 gone")
}

// BenchmarkPresence10k measures presence queries on a channel with
// 10 000 members (written by 4 gateways) on one node: List (every entry,
// read and merged) and Stats (the counts).
func BenchmarkPresence10k(b *testing.B) {
	srv, err := embedetcd.Start(embedetcd.Config{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(srv.Close)
	cli, err := discovery.Dial(context.Background(), discovery.EtcdConfig{Endpoints: []string{srv.Endpoint()}})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { cli.Close() })
	reg, _ := discovery.New(cli, discovery.Config{Cluster: "bench"})
	rs := testredis.New(b)
	g, err := reg.Register(context.Background(), discovery.Node{ID: "n1", Addr: rs.Addr, State: discovery.StateReady,
		StartedAt: time.Now(), Version: "test", RunID: fmt.Sprint(rs.PID())}, discovery.RegisterOptions{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { g.Close(context.Background()) })
	ctx := context.Background()
	var ps []*fanout.Presence
	for i := range 4 {
		c, err := fanout.New(ctx, fanout.Config{ID: fmt.Sprintf("gw%d", i), EtcdClient: cli, Cluster: "bench"})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { c.Close() })
		ps = append(ps, newPresence(b, c, fanout.PresenceOptions{TTL: time.Minute}))
	}
	const members = 10_000
	var wg sync.WaitGroup
	for i, p := range ps {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := i; j < members; j += len(ps) {
				id := fmt.Sprintf("client-%05d", j)
				p.Add(ctx, "big", fanout.PresenceEntry{Client: id, User: fmt.Sprintf("user-%d", j/2), Since: time.Now(), Info: json.RawMessage(`{"name":"` + id + `","device":"browser"}`)})
			}
		}()
	}
	wg.Wait()
	b.Run("List", func(b *testing.B) {
		for b.Loop() {
			list, err := ps[0].List(ctx, "big")
			if err != nil || len(list) != members {
				b.Fatalf("List: %d entries, %v", len(list), err)
			}
		}
	})
	b.Run("Stats", func(b *testing.B) {
		for b.Loop() {
			st, err := ps[0].Stats(ctx, "big")
			if err != nil || st.Clients != members || st.Users != members/2 {
				b.Fatalf("Stats: %+v, %v", st, err)
			}
		}
	})
}
