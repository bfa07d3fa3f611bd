package main

import (
	"encoding/json"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/pubmesh/pubmesh/discovery"
	"github.com/pubmesh/pubmesh/pubmeshtest"
)

// pubmesh history and subscribe --since against real node processes: a
// subscriber that stopped resumes from the last position it printed and
// gets the messages published meanwhile, once, then live ones.
func TestHistoryCLI(t *testing.T) {
	t.Parallel()
	cluster := uniqueCluster(t)
	reg := registry(t, cluster)
	pubmeshtest.ApplyConfig(t, reg, `namespaces: [{match: "chat.*", history_size: 100}]`)
	startPubmesh(t, nodeArgs(cluster, "n1", freePort(t))...)
	startPubmesh(t, nodeArgs(cluster, "n2", freePort(t))...)
	watchUntil(t, reg, 20*time.Second, "2 ready", func(s discovery.Snapshot) bool { return len(s.Ready()) == 2 })
	common := []string{"--etcd", etcdEndpoint, "--cluster", cluster}
	publish := func(lines ...string) {
		t.Helper()
		pub := exec.Command(binary, append([]string{"publish"}, append(common, "chat.room")...)...)
		pub.Stdin = strings.NewReader(strings.Join(lines, "\n") + "\n")
		if out, err := pub.CombinedOutput(); err != nil {
			t.Fatalf("publish: %v: %s", err, out)
		}
	}
	sub := startPubmesh(t, append(append([]string{"subscribe", "chat.room"}, common...), "--json", "--count", "2", "--log-level", "info")...)
	sub.errs.wait(t, "subscribed", 10*time.Second)
	publish("a", "b")
	if code := sub.exit(t, 20*time.Second); code != 0 {
		t.Fatalf("subscribe exited %d: %s", code, sub.errs)
	}
	lines := strings.Split(strings.TrimSpace(sub.out.String()), "\n")
	var last jsonMessage
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &last); err != nil || last.Payload != "b" || last.Pos == "" {
		t.Fatalf("last line %q: %+v, %v", lines[len(lines)-1], last, err)
	}
	publish("c", "d", "e")

	// history --since: what came after b, and that it is complete.
	r := runPubmesh(t, 20*time.Second, append(append([]string{"history", "chat.room"}, common...), "--since", last.Pos)...)
	if r.code != 0 || r.stdout != "c\nd\ne\n" || !strings.Contains(r.stderr, "3 message(s)") || strings.Contains(r.stderr, "NOT recovered") {
		t.Fatalf("history --since: %+v", r)
	}
	r = runPubmesh(t, 20*time.Second, append(append([]string{"history", "chat.room"}, common...), "--limit", "2", "--reverse")...)
	if r.code != 0 || r.stdout != "e\nd\n" {
		t.Fatalf("history --limit 2 --reverse: %+v", r)
	}
	// subscribe --since: c, d, e from history, then f live.
	res := startPubmesh(t, append(append([]string{"subscribe", "chat.room"}, common...), "--since", last.Pos, "--count", "4", "--log-level", "info")...)
	res.errs.wait(t, "recovered: 3 message", 10*time.Second)
	publish("f")
	if code := res.exit(t, 20*time.Second); code != 0 {
		t.Fatalf("subscribe --since exited %d: %s", code, res.errs)
	}
	if got := res.out.String(); got != "c\nd\ne\nf" {
		t.Fatalf("subscribe --since printed %q", got)
	}
	// Bad input: a channel without history, a bad position.
	r = runPubmesh(t, 20*time.Second, append([]string{"history", "news"}, common...)...)
	if r.code != 1 || !strings.Contains(r.stderr, "keeps no history") {
		t.Errorf("history of a channel without: %+v", r)
	}
	r = runPubmesh(t, 20*time.Second, append(append([]string{"subscribe", "chat.room"}, common...), "--since", "nonsense")...)
	if r.code != 2 || !strings.Contains(r.stderr, "invalid --since") {
		t.Errorf("bad --since: %+v", r)
	}
}
