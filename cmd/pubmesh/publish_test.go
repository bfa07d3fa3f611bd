package main

import (
	"encoding/json"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/pubmesh/pubmesh/discovery"
	"github.com/pubmesh/pubmesh/fanout"
	"github.com/pubmesh/pubmesh/internal/otlprecv"
)

// Lines piped into `pubmesh publish` reach `pubmesh subscribe` processes
// whole and in order, across a two-node cluster.
func TestPublishSubscribeCLI(t *testing.T) {
	t.Parallel()
	cluster := uniqueCluster(t)
	reg := registry(t, cluster)
	startPubmesh(t, nodeArgs(cluster, "n1", freePort(t))...)
	startPubmesh(t, nodeArgs(cluster, "n2", freePort(t))...)
	watchUntil(t, reg, 20*time.Second, "2 ready", func(s discovery.Snapshot) bool { return len(s.Ready()) == 2 })

	const n = 2000
	common := []string{"--etcd", etcdEndpoint, "--cluster", cluster, "--log-level", "info"}
	plain := startPubmesh(t, append(append([]string{"subscribe"}, common...), "--count", fmt.Sprint(n), "news")...)
	// Flags after the channel are flags, not channel names (issue 10, item 14).
	js := startPubmesh(t, append(append([]string{"subscribe", "news"}, common...), "--json", "--count", "1")...)
	plain.errs.wait(t, "subscribed", 10*time.Second)
	js.errs.wait(t, "subscribed", 10*time.Second)

	var in strings.Builder
	for i := 1; i <= n; i++ {
		fmt.Fprintf(&in, "line %d\n", i)
	}
	pub := exec.Command(binary, append([]string{"publish"}, append(common, "news")...)...)
	pub.Stdin = strings.NewReader(in.String())
	if out, err := pub.CombinedOutput(); err != nil {
		t.Fatalf("publish: %v: %s", err, out)
	}
	if code := plain.exit(t, 20*time.Second); code != 0 {
		t.Fatalf("subscribe exited %d: %s", code, plain.errs)
	}
	if got, want := plain.out.String(), strings.TrimSuffix(in.String(), "\n"); got != want {
		t.Fatalf("subscriber printed %d lines, not the %d published lines in order", strings.Count(got, "\n")+1, n)
	}
	if code := js.exit(t, 20*time.Second); code != 0 {
		t.Fatalf("subscribe --json exited %d: %s", code, js.errs)
	}
	var m jsonMessage
	if err := json.Unmarshal([]byte(js.out.String()), &m); err != nil {
		t.Fatalf("--json line %q: %v", js.out.String(), err)
	}
	if m.Channel != "news" || m.Payload != "line 1" || m.ID == "" || m.Time.IsZero() || (m.Node != "n1" && m.Node != "n2") {
		t.Fatalf("--json message %+v", m)
	}
}

func TestPublishSubscribeBadInput(t *testing.T) {
	t.Parallel()
	dead := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	tests := []struct {
		name string
		args []string
		code int
		msg  string
	}{
		{"publish without channel", []string{"publish"}, 2, "want CHANNEL"},
		{"publish, too many args", []string{"publish", "a", "b", "c"}, 2, "want CHANNEL"},
		{"publish to a bad channel", []string{"publish", "a b", "x"}, 2, "space or control"},
		{"subscribe without channel", []string{"subscribe"}, 2, "at least one CHANNEL"},
		{"subscribe to an empty channel", []string{"subscribe", ""}, 2, "empty channel"},
		{"subscribe to a channel that looks like a flag", []string{"subscribe", "--", "--json"}, 2, "starts with '-'"},
		{"subscribe with an unknown flag after the channel", []string{"subscribe", "news", "--jsn"}, 2, "flag provided but not defined: -jsn"},
		{"publish to a channel that looks like a flag", []string{"publish", "--", "-news", "x"}, 2, "starts with '-'"},
		{"bad replicas", []string{"publish", "--replicas", "0", "a", "x"}, 2, "--replicas"},
		{"bad trace sample ratio", []string{"publish", "--otlp-endpoint", "127.0.0.1:1", "--trace-sample-ratio", "2", "a", "x"}, 2, "--trace-sample-ratio"},
		{"unreachable etcd", []string{"publish", "--etcd", dead, "--etcd-timeout", "500ms", "a", "x"}, 1, "unreachable"},
	}
	for _, tc := range tests {
		r := runPubmesh(t, 20*time.Second, tc.args...)
		if r.code != tc.code || !strings.Contains(r.stderr, tc.msg) || strings.Count(strings.TrimSpace(r.stderr), "\n") > 0 {
			t.Errorf("%s: exit %d, stderr %q; want exit %d and one line with %q", tc.name, r.code, r.stderr, tc.code, tc.msg)
		}
		if strings.Contains(r.stderr, "panic") {
			t.Errorf("%s: panic: %s", tc.name, r.stderr)
		}
	}
}

// TestTracingCLI: `pubmesh publish` and `pubmesh subscribe` with
// --otlp-endpoint export one trace to an OTLP receiver, flushed when each
// command exits: the publish span from pubmesh-publish, the node hop and
// delivery from pubmesh-subscribe.
func TestTracingCLI(t *testing.T) {
	t.Parallel()
	rcv, err := otlprecv.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(rcv.Close)
	cluster := uniqueCluster(t)
	reg := registry(t, cluster)
	startPubmesh(t, nodeArgs(cluster, "n1", freePort(t))...)
	watchUntil(t, reg, 20*time.Second, "1 ready", func(s discovery.Snapshot) bool { return len(s.Ready()) == 1 })
	common := []string{"--etcd", etcdEndpoint, "--cluster", cluster, "--log-level", "info",
		"--otlp-endpoint", rcv.Endpoint(), "--trace-sample-ratio", "1"}
	sub := startPubmesh(t, append(append([]string{"subscribe"}, common...), "--count", "1", "news")...)
	sub.errs.wait(t, "subscribed", 10*time.Second)
	if r := runPubmesh(t, 20*time.Second, append(append([]string{"publish"}, common...), "news", "traced")...); r.code != 0 {
		t.Fatalf("publish exited %d: %s", r.code, r.stderr)
	}
	if code := sub.exit(t, 20*time.Second); code != 0 {
		t.Fatalf("subscribe exited %d: %s", code, sub.errs)
	}
	spans := rcv.Spans()
	byName := map[string]otlprecv.Span{}
	for _, s := range spans {
		byName[s.Name] = s
	}
	pub, hop, del := byName[fanout.SpanPublish], byName[fanout.SpanNodeHop], byName[fanout.SpanDeliver]
	if pub.Service != "pubmesh-publish" || hop.Service != "pubmesh-subscribe" || del.Service != "pubmesh-subscribe" ||
		hop.TraceID != pub.TraceID || hop.ParentSpanID != pub.SpanID || del.ParentSpanID != hop.SpanID || pub.TraceID == "" {
		t.Fatalf("spans: %+v", spans)
	}
}
