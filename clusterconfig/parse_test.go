package clusterconfig_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/pubmesh/pubmesh/clusterconfig"
)

func TestParseDefaults(t *testing.T) {
	for _, in := range []string{"", "{}", "namespaces: []", "# only a comment\n"} {
		d, err := clusterconfig.Parse([]byte(in))
		if err != nil {
			t.Fatalf("Parse(%q): %v", in, err)
		}
		if got := clusterconfig.Diff(clusterconfig.Defaults(), d); len(got) != 0 {
			t.Errorf("Parse(%q) differs from the defaults: %v", in, got)
		}
	}
}

func TestParseOnlyNamespaces(t *testing.T) {
	in := `
namespaces:
  - match: "chat.*"
    history_size: 100
    history_ttl: 10m
    presence: true
  - match: "internal.**"
    allow_subscribe: none
    allow_publish: none
`
	d, err := clusterconfig.Parse([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	if d.Gateway != clusterconfig.DefaultGateway || d.Node != clusterconfig.DefaultNode {
		t.Errorf("left-out sections are not at their defaults: %+v %+v", d.Gateway, d.Node)
	}
	chat := d.For("chat.lobby")
	if chat.HistorySize != 100 || time.Duration(chat.HistoryTTL) != 10*time.Minute || !chat.Presence ||
		chat.AllowPublish != clusterconfig.AccessToken || chat.MaxPublishBytes != 32<<10 {
		t.Errorf("chat.lobby: %+v", chat)
	}
	if ns := d.For("internal.a.b"); ns.AllowSubscribe != clusterconfig.AccessNone {
		t.Errorf("internal.a.b: %+v", ns)
	}
	if ns := d.For("other"); ns.Match != "**" || ns.HistorySize != 0 {
		t.Errorf("the implicit default rule: %+v", ns)
	}
	// The same document as JSON parses to the same thing.
	j, err := clusterconfig.Parse(d.JSON())
	if err != nil {
		t.Fatal(err)
	}
	if diff := clusterconfig.Diff(d, j); len(diff) != 0 {
		t.Errorf("JSON round trip changed %v", diff)
	}
}

func TestParseReportsEveryProblem(t *testing.T) {
	in := `{
  "namespaces": [{"match": "chat..x", "allow_publish": "everyone"}, {"history_size": -1}],
  "gateway": {"max_subscriptions": "many", "ping_interval": "5"},
  "node": {"jwt_secret": "x"}
}`
	_, err := clusterconfig.Parse([]byte(in))
	var ve *clusterconfig.ValidationError
	if !errors.As(err, &ve) {
		t.Fatalf("err = %v, want a ValidationError", err)
	}
	want := []string{
		"namespaces[0].match", "namespaces[0].allow_publish", "namespaces[1].match", "namespaces[1].history_size",
		"gateway.max_subscriptions", "gateway.ping_interval", "node.jwt_secret",
	}
	got := map[string]string{}
	for _, p := range ve.Problems {
		got[p.Path] = p.String()
	}
	for _, w := range want {
		if got[w] == "" {
			t.Errorf("no problem reported at %s; got %v", w, ve.Problems)
		}
	}
	if len(ve.Problems) != len(want) {
		t.Errorf("%d problems, want %d:\n%v", len(ve.Problems), len(want), err)
	}
	if !strings.Contains(got["node.jwt_secret"], "secrets never go") {
		t.Errorf("a secret key is not refused as one: %s", got["node.jwt_secret"])
	}
	if !strings.Contains(got["namespaces[0].allow_publish"], `"everyone"`) {
		t.Errorf("the value is not in the problem: %s", got["namespaces[0].allow_publish"])
	}
}

func TestParseRefuses(t *testing.T) {
	for _, tc := range []struct{ name, in, path string }{
		{"not a mapping", "[1, 2]", "(document)"},
		{"not yaml", "a: [", "(document)"},
		{"unknown section", "gatway: {}", "gatway"},
		{"null", "gateway: {send_queue: null}", "gateway.send_queue"},
		{"zero send queue", "gateway: {send_queue: 0}", "gateway.send_queue"},
		{"fraction", "gateway: {publish_burst: 1.5}", "gateway.publish_burst"},
		{"negative rate", "gateway: {publish_rate: -1}", "gateway.publish_rate"},
		{"tiny frames", "gateway: {max_frame_bytes: 10}", "gateway.max_frame_bytes"},
		{"ping in ms", "gateway: {ping_interval: 10ms}", "gateway.ping_interval"},
		{"buffer limit", "node: {output_buffer_limit: 64mb}", "node.output_buffer_limit"},
		{"soft over hard", "node: {output_buffer_limit: 1mb 2mb 10}", "node.output_buffer_limit"},
		{"maxmemory unit", "node: {maxmemory: 12tb}", "node.maxmemory"},
		{"maxmemory tiny", "node: {maxmemory: 1000}", "node.maxmemory"},
		{"namespaces not a list", "namespaces: {match: a}", "namespaces"},
		{"partial double star", "namespaces: [{match: 'a.b**'}]", "namespaces[0].match"},
		{"zero ttl", "namespaces: [{match: a, history_ttl: 0s}]", "namespaces[0].history_ttl"},
		{"huge publish", "namespaces: [{match: a, max_publish_bytes: 100000000}]", "namespaces[0].max_publish_bytes"},
		{"join_leave without presence", "namespaces: [{match: a, join_leave: true}]", "namespaces[0].join_leave"},
		{"presence not a bool", "namespaces: [{match: a, presence: 1}]", "namespaces[0].presence"},
		{"join_leave not a bool", "namespaces: [{match: a, presence: true, join_leave: 'yes'}]", "namespaces[0].join_leave"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := clusterconfig.Parse([]byte(tc.in))
			var ve *clusterconfig.ValidationError
			if !errors.As(err, &ve) || len(ve.Problems) != 1 || ve.Problems[0].Path != tc.path {
				t.Fatalf("Parse(%q) = %v; want one problem at %s", tc.in, err, tc.path)
			}
		})
	}
}

func TestParsePresence(t *testing.T) {
	for _, tc := range []struct {
		in                  string
		presence, joinLeave bool
	}{
		{"namespaces: [{match: a}]", false, false},
		{"namespaces: [{match: a, presence: true}]", true, false},
		{"namespaces: [{match: a, presence: true, join_leave: true}]", true, true},
		{"namespaces: [{match: a, presence: false, join_leave: false}]", false, false},
	} {
		d, err := clusterconfig.Parse([]byte(tc.in))
		if err != nil {
			t.Fatalf("Parse(%q): %v", tc.in, err)
		}
		if ns := d.For("a"); ns.Presence != tc.presence || ns.JoinLeave != tc.joinLeave {
			t.Errorf("Parse(%q): presence %v join_leave %v; want %v %v", tc.in, ns.Presence, ns.JoinLeave, tc.presence, tc.joinLeave)
		}
	}
	if ns := clusterconfig.Defaults().For("x"); ns.Presence || ns.JoinLeave {
		t.Errorf("the default namespace has presence %v join_leave %v; want both false", ns.Presence, ns.JoinLeave)
	}
}

func TestParseSizes(t *testing.T) {
	d, err := clusterconfig.Parse([]byte("node: {maxmemory: 512mb, output_buffer_limit: '32mb 8mb 30'}"))
	if err != nil {
		t.Fatal(err)
	}
	if d.Node.MaxMemory != 512<<20 || d.Node.OutputBufferLimit != (clusterconfig.BufferLimit{Hard: 32 << 20, Soft: 8 << 20, SoftFor: 30 * time.Second}) {
		t.Errorf("node = %+v", d.Node)
	}
}

func TestGlob(t *testing.T) {
	for _, tc := range []struct {
		glob    string
		yes, no []string
	}{
		{"chat.*", []string{"chat.lobby", "chat.x-y"}, []string{"chat", "chat.", "chat.a.b", "chatx.a", "xchat.a"}},
		{"rooms.**", []string{"rooms.a", "rooms.a.b.c"}, []string{"rooms", "room.a", "rooms."}},
		{"**", []string{"a", "a.b", "x.y.z"}, nil},
		{"user-*.inbox", []string{"user-1.inbox", "user-.inbox"}, []string{"user-1.outbox", "user.inbox"}},
		{"a.**.z", []string{"a.b.z", "a.b.c.z"}, []string{"a.z", "a.b.y"}},
		{"news", []string{"news"}, []string{"news.a", "newsx"}},
		{"a+b.(c)", []string{"a+b.(c)"}, []string{"aab.c"}},
	} {
		ns := clusterconfig.Namespace{Match: tc.glob}
		for _, ch := range tc.yes {
			if !ns.Matches(ch) {
				t.Errorf("%q does not match %q", tc.glob, ch)
			}
		}
		for _, ch := range tc.no {
			if ns.Matches(ch) {
				t.Errorf("%q matches %q", tc.glob, ch)
			}
		}
	}
}

func TestFirstMatchWins(t *testing.T) {
	d, err := clusterconfig.Parse([]byte(`namespaces: [{match: "chat.vip", history_size: 5}, {match: "chat.*", history_size: 1}]`))
	if err != nil {
		t.Fatal(err)
	}
	for ch, want := range map[string]int{"chat.vip": 5, "chat.other": 1, "news": 0} {
		if got := d.For(ch).HistorySize; got != want {
			t.Errorf("%s: history_size %d, want %d", ch, got, want)
		}
	}
}
