package clusterconfig_test

import (
	"reflect"
	"strings"
	"testing"

	"github.com/pubmesh/pubmesh/clusterconfig"
)

func TestSetAndUnset(t *testing.T) {
	tree, err := clusterconfig.Decode([]byte(`namespaces: [{match: "chat.*"}]`))
	if err != nil {
		t.Fatal(err)
	}
	steps := []struct {
		op, path, value string
		err             string
	}{
		{"set", "gateway.max_subscriptions", "500", ""},
		{"set", "namespaces[0].history_size", "50", ""},
		{"set", "namespaces.1.match", "rooms.**", ""}, // appends
		{"set", "namespaces[1].presence", "true", ""},
		{"set", "namespaces[5].match", "x", "out of range"},
		{"set", "gateway.max_subscriptions.x", "1", "not inside a mapping"},
		{"unset", "node.maxmemory", "", "not set"},
		{"unset", "namespaces[0].history_size", "", ""},
	}
	for _, s := range steps {
		var err error
		if s.op == "set" {
			err = clusterconfig.Set(tree, s.path, clusterconfig.ParseValue(s.value))
		} else {
			err = clusterconfig.Unset(tree, s.path)
		}
		if (err == nil) != (s.err == "") || (err != nil && !strings.Contains(err.Error(), s.err)) {
			t.Fatalf("%s %s: err = %v, want %q", s.op, s.path, err, s.err)
		}
	}
	d, err := clusterconfig.FromTree(tree)
	if err != nil {
		t.Fatal(err)
	}
	if d.Gateway.MaxSubscriptions != 500 || d.For("chat.a").HistorySize != 0 || !d.For("rooms.a.b").Presence {
		t.Errorf("document after edits: %s", d.JSON())
	}
	b, err := clusterconfig.Encode(tree)
	if err != nil {
		t.Fatal(err)
	}
	back, err := clusterconfig.Decode(b)
	if err != nil || !reflect.DeepEqual(normal(t, back), normal(t, tree)) {
		t.Errorf("Encode/Decode round trip: %s, %v", b, err)
	}
}

func normal(t *testing.T, tree map[string]any) string {
	b, err := clusterconfig.Encode(tree)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestDiff(t *testing.T) {
	a, _ := clusterconfig.Parse([]byte(`gateway: {max_subscriptions: 100}`))
	b, _ := clusterconfig.Parse([]byte(`{gateway: {max_subscriptions: 5, publish_rate: 2.5}, namespaces: [{match: a}]}`))
	got := clusterconfig.Diff(a, b)
	var paths []string
	for _, c := range got {
		paths = append(paths, c.String())
	}
	want := []string{
		"~ gateway.max_subscriptions: 100 -> 5",
		"~ gateway.publish_rate: 20 -> 2.5",
	}
	joined := strings.Join(paths, "\n")
	for _, w := range want {
		if !strings.Contains(joined, w) {
			t.Errorf("diff lacks %q:\n%s", w, joined)
		}
	}
	if !strings.Contains(joined, `+ namespaces[0].match: "a"`) {
		t.Errorf("diff lacks the new namespace:\n%s", joined)
	}
	if n := len(clusterconfig.Diff(b, b)); n != 0 {
		t.Errorf("a document differs from itself in %d keys", n)
	}
	if s := clusterconfig.Summary(got, 2); s != "gateway.max_subscriptions, gateway.publish_rate, and 1 more" {
		t.Errorf("Summary(2) = %q", s)
	}
	if s := clusterconfig.Summary(got, 5); !strings.Contains(s, "namespaces[0] (8 keys)") {
		t.Errorf("Summary(5) = %q", s)
	}
}
