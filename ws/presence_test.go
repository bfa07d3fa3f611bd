package ws

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"sort"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

const presenceDoc = `
namespaces:
  - {match: "room.*", presence: true, join_leave: true}
  - {match: "quiet.*", presence: true}
`

// dialInfo connects with token and ?info=.
func (g *gw) dialInfo(t *testing.T, token, info string) *wsClient {
	t.Helper()
	u := g.wsURL + "?token=" + url.QueryEscape(token)
	if info != "" {
		u += "&info=" + url.QueryEscape(info)
	}
	c, resp, err := websocket.DefaultDialer.Dial(u, nil)
	if err != nil {
		t.Fatalf("dial: %v (%v)", err, resp)
	}
	t.Cleanup(func() { c.Close() })
	return &wsClient{t: t, c: c}
}

type presenceReply struct {
	Op      string `json:"op"`
	Code    string `json:"code"`
	Channel string `json:"channel"`
	Clients json.RawMessage
	Users   int `json:"users"`
	Info    struct {
		Client  string          `json:"client"`
		User    string          `json:"user"`
		Gateway string          `json:"gateway"`
		Info    json.RawMessage `json:"info"`
	} `json:"info"`
}

// raw sends op on channel and returns the reply's JSON.
func (c *wsClient) raw(op, channel string) presenceReply {
	c.t.Helper()
	c.nextID++
	id := c.nextID
	c.send(map[string]any{"op": op, "id": id, "channel": channel})
	want := fmt.Sprint(id)
	deadline := time.Now().Add(10 * time.Second)
	for {
		c.c.SetReadDeadline(deadline)
		_, b, err := c.c.ReadMessage()
		if err != nil {
			c.t.Fatalf("read: %v", err)
		}
		var f struct {
			ID json.RawMessage `json:"id"`
		}
		json.Unmarshal(b, &f)
		if string(f.ID) == want {
			var r presenceReply
			json.Unmarshal(b, &r)
			return r
		}
	}
}

// nextEvent reads until a join or leave frame of another subject than
// skip (a subscriber also gets its own join).
func (c *wsClient) nextEvent(within time.Duration) presenceReply { return c.eventNot("alice", within) }

func (c *wsClient) eventNot(skip string, within time.Duration) presenceReply {
	c.t.Helper()
	deadline := time.Now().Add(within)
	for {
		c.c.SetReadDeadline(deadline)
		_, b, err := c.c.ReadMessage()
		if err != nil {
			c.t.Fatalf("waiting for a join or leave: %v", err)
		}
		var r presenceReply
		json.Unmarshal(b, &r)
		if (r.Op == OpJoin || r.Op == OpLeave) && r.Info.User != skip {
			return r
		}
	}
}

func presenceClients(t *testing.T, raw json.RawMessage) []string {
	t.Helper()
	var list []struct {
		Client, User, Gateway string
		Info                  json.RawMessage
	}
	if err := json.Unmarshal(raw, &list); err != nil {
		t.Fatalf("clients %s: %v", raw, err)
	}
	var out []string
	for _, e := range list {
		out = append(out, e.User+"@"+e.Gateway+string(e.Info))
	}
	sort.Strings(out)
	return out
}

// Presence across two gateways: each subscriber is listed once with its
// subject, gateway and info; stats count clients and subjects; joins and
// leaves reach the subscribers on the other gateway; a namespace without
// presence answers no_presence; the reserved channels are refused.
func TestPresenceTwoGateways(t *testing.T) {
	t.Parallel()
	secret := []byte("presence-secret")
	cfg := Config{JWTSecret: secret, APIKeys: []string{"key1"}}
	a := newGW(t, cfg, gwOptions{nodes: 2})
	a.applyConfig(t, presenceDoc)
	b := a.another(t, cfg, "127.0.0.1:0")
	waitFor(t, 5*time.Second, "b's config", func() bool { return b.client.ClusterConfig().Revision == a.client.ClusterConfig().Revision })
	all := []string{"**"}
	alice := a.dialInfo(t, token(t, secret, "alice", all, all, time.Hour), `{"name": "Alice"}`)
	bob := b.dialInfo(t, token(t, secret, "bob", all, all, time.Hour), "")
	bob2 := b.dialInfo(t, token(t, secret, "bob", all, all, time.Hour), `"phone"`)

	alice.mustOK(OpSubscribe, "room.1", nil)
	bob.mustOK(OpSubscribe, "room.1", nil)
	if ev := alice.nextEvent(5 * time.Second); ev.Op != OpJoin || ev.Channel != "room.1" || ev.Info.User != "bob" || ev.Info.Gateway != b.client.ID() {
		t.Fatalf("alice got %+v, want bob's join from gateway %s", ev, b.client.ID())
	}
	bob2.mustOK(OpSubscribe, "room.1", nil)
	alice.nextEvent(5 * time.Second)

	r := bob.raw(OpPresence, "room.1")
	got := presenceClients(t, r.Clients)
	want := []string{`alice@` + a.client.ID() + `{"name":"Alice"}`, `bob@` + b.client.ID(), `bob@` + b.client.ID() + `"phone"`}
	sort.Strings(want)
	if r.Op != OpPresence || fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("presence = %+v %v, want %v", r, got, want)
	}
	st := alice.raw(OpPresenceStats, "room.1")
	if string(st.Clients) != "3" || st.Users != 2 {
		t.Fatalf("presence_stats = %s clients %d users, want 3 and 2", st.Clients, st.Users)
	}
	// HTTP, with the API key and with a token.
	code, body := a.get(t, "/api/presence/room.1/stats", "key1")
	if code != 200 || body["clients"] != 3.0 || body["users"] != 2.0 {
		t.Fatalf("GET stats = %d %v", code, body)
	}
	code, body = b.get(t, "/api/presence/room.1", token(t, secret, "carol", []string{"room.*"}, nil, time.Hour))
	if list, _ := body["clients"].([]any); code != 200 || len(list) != 3 {
		t.Fatalf("GET presence = %d %v", code, body)
	}
	if code, _ := b.get(t, "/api/presence/room.1", token(t, secret, "carol", []string{"other.*"}, nil, time.Hour)); code != http.StatusForbidden {
		t.Errorf("GET presence without the subscribe claim = %d, want 403", code)
	}
	if code, body := a.get(t, "/api/presence/plain", "key1"); code != http.StatusNotFound || body["code"] != CodeNoPresence {
		t.Errorf("GET presence of a channel without presence = %d %v", code, body)
	}
	if r := alice.raw(OpPresence, "plain"); r.Code != CodeNoPresence {
		t.Errorf("presence op on a channel without presence = %+v", r)
	}
	if f := alice.request(OpSubscribe, presenceEventsChannel, nil); f.Code != CodeBadRequest {
		t.Errorf("subscribe to %s = %+v, want bad_request", presenceEventsChannel, f)
	}
	if f := alice.request(OpPublish, controlChannel, map[string]any{}); f.Code != CodeBadRequest {
		t.Errorf("publish to %s = %+v, want bad_request", controlChannel, f)
	}

	// Leaves: an unsubscribe and a disconnect.
	bob.mustOK(OpUnsubscribe, "room.1", nil)
	if ev := alice.nextEvent(5 * time.Second); ev.Op != OpLeave || ev.Info.User != "bob" {
		t.Fatalf("alice got %+v, want bob's leave", ev)
	}
	bob2.c.Close()
	if ev := alice.nextEvent(5 * time.Second); ev.Op != OpLeave || ev.Info.User != "bob" {
		t.Fatalf("alice got %+v, want bob2's leave", ev)
	}
	if st := alice.raw(OpPresenceStats, "room.1"); string(st.Clients) != "1" || st.Users != 1 {
		t.Fatalf("after the leaves: %s clients %d users", st.Clients, st.Users)
	}
	// A namespace with presence but no join_leave: entries, no events.
	alice.mustOK(OpSubscribe, "quiet.1", nil)
	bob.mustOK(OpSubscribe, "quiet.1", nil)
	if st := bob.raw(OpPresenceStats, "quiet.1"); string(st.Clients) != "2" {
		t.Fatalf("quiet.1: %s clients", st.Clients)
	}
	if code, _ := a.get(t, "/metrics", ""); code != 200 {
		t.Fatal("metrics")
	}
	if n := a.metricValue(t, "pubmesh_ws_presence_events_total", "published_join"); n < 1 {
		t.Errorf("published_join = %v", n)
	}
}

// Bad client info is refused before the upgrade.
func TestPresenceClientInfo(t *testing.T) {
	t.Parallel()
	secret := []byte("presence-secret")
	g := newGW(t, Config{JWTSecret: secret}, gwOptions{})
	tok := token(t, secret, "u", []string{"**"}, nil, time.Hour)
	for _, tc := range []struct {
		info string
		want int
	}{
		{`{"a":1}`, http.StatusSwitchingProtocols},
		{`{"a":`, http.StatusBadRequest},
		{`"` + string(make([]byte, 1100)) + `"`, http.StatusRequestEntityTooLarge},
	} {
		u := g.wsURL + "?token=" + url.QueryEscape(tok) + "&info=" + url.QueryEscape(tc.info)
		c, resp, _ := websocket.DefaultDialer.Dial(u, nil)
		if c != nil {
			c.Close()
		}
		if resp == nil || resp.StatusCode != tc.want {
			t.Errorf("info %.20q: %v, want HTTP %d", tc.info, resp, tc.want)
		}
	}
}

// The server API acts on every gateway: a subject connected to both is
// disconnected on both with the reason and the reconnect code; channels
// are counted across both; an unsubscribe stops a subject's messages; the
// API refuses requests without an API key; the registry lists both.
func TestServerAPITwoGateways(t *testing.T) {
	t.Parallel()
	secret := []byte("server-api")
	cfg := Config{JWTSecret: secret, APIKeys: []string{"key1"}}
	a := newGW(t, cfg, gwOptions{})
	a.applyConfig(t, presenceDoc)
	b := a.another(t, cfg, "127.0.0.1:0")
	waitFor(t, 10*time.Second, "both gateways in the registry", func() bool {
		gws, _ := a.reg.Gateways(t.Context())
		return len(gws) == 2
	})
	gws, _ := a.reg.Gateways(t.Context())
	for _, g := range gws {
		if g.URL != a.url+"/" && g.URL != b.url+"/" {
			t.Errorf("registered gateway %+v has an unknown URL", g)
		}
	}
	all := []string{"**"}
	carolA := a.dial(t, token(t, secret, "carol", all, all, time.Hour), nil)
	carolB := b.dial(t, token(t, secret, "carol", all, all, time.Hour), nil)
	dave := b.dial(t, token(t, secret, "dave", all, all, time.Hour), nil)
	carolA.mustOK(OpSubscribe, "news.a", nil)
	carolB.mustOK(OpSubscribe, "news.a", nil)
	dave.mustOK(OpSubscribe, "news.a", nil)
	dave.mustOK(OpSubscribe, "news.b", nil)
	dave.mustOK(OpSubscribe, "room.x", nil)

	// Refusals.
	tok := token(t, secret, "carol", all, all, time.Hour)
	for _, path := range []string{"/api/channels", "/api/info"} {
		if code, _ := a.get(t, path, ""); code != http.StatusUnauthorized {
			t.Errorf("GET %s without a credential = %d, want 401", path, code)
		}
		if code, _ := a.get(t, path, tok); code != http.StatusForbidden {
			t.Errorf("GET %s with a token = %d, want 403", path, code)
		}
	}
	if code, _ := a.post(t, "/api/disconnect", tok, []byte(`{"user":"carol"}`)); code != http.StatusForbidden {
		t.Errorf("disconnect with a token = %d, want 403", code)
	}
	if code, _ := a.post(t, "/api/disconnect", "key1", []byte(`{}`)); code != http.StatusBadRequest {
		t.Errorf("disconnect without user or client = %d, want 400", code)
	}

	code, body := a.get(t, "/api/channels?pattern=news.*", "key1")
	chans, _ := body["channels"].(map[string]any)
	if code != 200 || chans["news.a"] != 3.0 || chans["news.b"] != 1.0 || chans["room.x"] != nil || len(body["missing"].([]any)) != 0 {
		t.Fatalf("GET /api/channels = %d %v", code, body)
	}
	code, body = b.get(t, "/api/info", "key1")
	if gw, _ := body["gateways"].([]any); code != 200 || len(gw) != 2 || len(body["nodes"].([]any)) != 1 {
		t.Fatalf("GET /api/info = %d %v", code, body)
	}

	// Unsubscribe dave from news.a: no more messages there, news.b goes on.
	code, body = a.post(t, "/api/unsubscribe", "key1", []byte(`{"user":"dave","channel":"news.a"}`))
	if code != 200 || body["affected"] != 1.0 {
		t.Fatalf("unsubscribe = %d %v", code, body)
	}
	dave.next(5*time.Second, func(f frame) bool { return f.Op == "unsubscribed" && f.Channel == "news.a" })
	carolA.mustOK(OpPublish, "news.a", 1)
	carolA.mustOK(OpPublish, "news.b", 2)
	if m := dave.message(5 * time.Second); m.Channel != "news.b" {
		t.Fatalf("dave got %+v, want only news.b", m)
	}
	dave.mustOK(OpSubscribe, "news.a", nil) // subscribes afresh
	carolA.mustOK(OpPublish, "news.a", 3)
	if m := dave.message(5 * time.Second); m.Channel != "news.a" {
		t.Fatalf("dave after subscribing again got %+v", m)
	}

	code, body = b.post(t, "/api/disconnect", "key1", []byte(`{"user":"carol","reason":"banned","reconnect":false}`))
	if code != 200 || body["affected"] != 2.0 {
		t.Fatalf("disconnect = %d %v", code, body)
	}
	for _, c := range []*wsClient{carolA, carolB} {
		if ce := c.closeErr(5 * time.Second); ce.Code != CloseDisconnect || ce.Text != "banned" {
			t.Errorf("carol closed with %d %q, want %d banned", ce.Code, ce.Text, CloseDisconnect)
		}
	}
	code, body = a.post(t, "/api/disconnect", "key1", []byte(`{"user":"dave","reconnect":true}`))
	if code != 200 || body["affected"] != 1.0 {
		t.Fatalf("disconnect dave = %d %v", code, body)
	}
	if ce := dave.closeErr(5 * time.Second); ce.Code != CloseDisconnectReconnect {
		t.Errorf("dave closed with %d, want %d", ce.Code, CloseDisconnectReconnect)
	}
	if v := a.metricValue(t, "pubmesh_ws_server_api_calls_total", "disconnect", "ok"); v != 1 {
		t.Errorf("server API disconnect calls on a = %v, want 1", v)
	}
}

// metricValue reads a counter of the gateway's registry by name and label
// values (in the order of the metric's labels).
func (g *gw) metricValue(t *testing.T, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := g.reg2.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			for i, lp := range m.GetLabel() {
				if i < len(labels) && lp.GetValue() != labels[i] {
					continue next
				}
			}
			if m.Counter != nil {
				return m.Counter.GetValue()
			}
			return m.Gauge.GetValue()
		}
	}
	return 0
}
