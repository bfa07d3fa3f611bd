package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pubmesh/pubmesh/discovery"
)

// configCmd runs `pubmesh config ARGS...` against the test etcd.
func configCmd(t *testing.T, cluster string, args ...string) result {
	t.Helper()
	return runPubmesh(t, 20*time.Second, append(append([]string{"config"}, args...), "--etcd", etcdEndpoint, "--cluster", cluster)...)
}

func storedConfig(t *testing.T, reg *discovery.Registry) discovery.StoredConfig {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	cur, err := reg.Config(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return cur
}

var writtenRe = regexp.MustCompile(`revision (\d+) written`)

func written(t *testing.T, r result) int64 {
	t.Helper()
	m := writtenRe.FindStringSubmatch(r.stdout)
	if r.code != 0 || m == nil {
		t.Fatalf("no revision written: exit %d\nstdout: %s\nstderr: %s", r.code, r.stdout, r.stderr)
	}
	n, _ := strconv.ParseInt(m[1], 10, 64)
	return n
}

func TestConfigCommands(t *testing.T) {
	cluster := uniqueCluster(t)
	reg := registry(t, cluster)

	r := configCmd(t, cluster, "get")
	if r.code != 0 || !strings.Contains(r.stdout, "defaults are in force (revision 0)") {
		t.Fatalf("get with no document: %+v", r)
	}
	// set: one value, the diff, a new revision.
	r = configCmd(t, cluster, "set", "gateway.max_subscriptions", "500")
	rev1 := written(t, r)
	if !strings.Contains(r.stdout, "~ gateway.max_subscriptions: 100 -> 500") {
		t.Errorf("set does not show its diff:\n%s", r.stdout)
	}
	if cur := storedConfig(t, reg); cur.Revision != rev1 || cur.Doc.Gateway.MaxSubscriptions != 500 {
		t.Fatalf("after set: %+v", cur)
	}
	// get --json: the revision and the document as written.
	r = configCmd(t, cluster, "get", "--json")
	var got struct {
		Revision int64          `json:"revision"`
		Document map[string]any `json:"document"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &got); err != nil || got.Revision != rev1 ||
		got.Document["gateway"].(map[string]any)["max_subscriptions"] != float64(500) {
		t.Fatalf("get --json = %s (%v)", r.stdout, err)
	}
	// --dry-run validates and shows the diff, writes nothing.
	r = configCmd(t, cluster, "set", "namespaces[0].match", "chat.*", "--dry-run")
	if r.code != 0 || !strings.Contains(r.stdout, `+ namespaces[0].match: "chat.*"`) || !strings.Contains(r.stdout, "dry run") {
		t.Errorf("dry run: %+v", r)
	}
	if cur := storedConfig(t, reg); cur.Revision != rev1 {
		t.Errorf("dry run wrote revision %d", cur.Revision)
	}
	// apply: a file with five problems reports all five and writes nothing.
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte(`
namespaces:
  - match: "chat..x"          # 1: empty segment
    allow_publish: everyone   # 2
    history_size: -3          # 3
gateway:
  send_queue: 0               # 4
  ping_intervall: 10s         # 5: unknown key
`), 0o600)
	r = configCmd(t, cluster, "apply", "-f", bad)
	if r.code != 1 || !strings.Contains(r.stderr, "the document has 5 problem(s)") || !strings.Contains(r.stderr, "nothing was written") {
		t.Fatalf("apply of a bad file: exit %d\n%s", r.code, r.stderr)
	}
	for _, p := range []string{"namespaces[0].match", "namespaces[0].allow_publish", "namespaces[0].history_size", "gateway.send_queue", "gateway.ping_intervall"} {
		if !strings.Contains(r.stderr, "  "+p+":") {
			t.Errorf("problem at %s not reported:\n%s", p, r.stderr)
		}
	}
	if cur := storedConfig(t, reg); cur.Revision != rev1 {
		t.Errorf("a refused apply wrote revision %d", cur.Revision)
	}
	// apply: a valid file replaces the document.
	good := filepath.Join(dir, "good.json")
	os.WriteFile(good, []byte(`{"namespaces":[{"match":"chat.*","history_size":50}],"gateway":{"publish_rate":5}}`), 0o600)
	r = configCmd(t, cluster, "apply", "-f", good, "--comment", "chat history")
	rev2 := written(t, r)
	for _, want := range []string{"~ gateway.max_subscriptions: 500 -> 100", "~ gateway.publish_rate: 20 -> 5", "+ namespaces[0].history_size: 50"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("apply diff lacks %q:\n%s", want, r.stdout)
		}
	}
	// history: both writes, who, what changed; rollback restores the first.
	r = configCmd(t, cluster, "history", "--author", "x")
	if r.code == 0 {
		t.Errorf("history accepted --author")
	}
	r = configCmd(t, cluster, "history")
	if r.code != 0 || !strings.Contains(r.stdout, strconv.FormatInt(rev1, 10)) || !strings.Contains(r.stdout, strconv.FormatInt(rev2, 10)+" *") ||
		!strings.Contains(r.stdout, "chat history") || !strings.Contains(r.stdout, "@") {
		t.Errorf("history:\n%s\n%s", r.stdout, r.stderr)
	}
	r = configCmd(t, cluster, "rollback", strconv.FormatInt(rev1, 10), "--author", "ops")
	rev3 := written(t, r)
	if cur := storedConfig(t, reg); cur.Revision != rev3 || cur.Doc.Gateway.MaxSubscriptions != 500 || len(cur.Doc.Namespaces) != 0 {
		t.Fatalf("after rollback: %+v", cur)
	}
	r = configCmd(t, cluster, "history", "--json")
	var hist []struct {
		Revision   int64  `json:"revision"`
		Author     string `json:"author"`
		RollbackOf int64  `json:"rollback_of"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &hist); err != nil || len(hist) != 3 || hist[2].RollbackOf != rev1 || hist[2].Author != "ops" {
		t.Errorf("history --json = %s (%v)", r.stdout, err)
	}
	// unset: the key takes its default again.
	written(t, configCmd(t, cluster, "unset", "gateway.max_subscriptions"))
	if cur := storedConfig(t, reg); cur.Doc.Gateway.MaxSubscriptions != 100 {
		t.Errorf("after unset: %d", cur.Doc.Gateway.MaxSubscriptions)
	}
	// A negative number is a value, refused with its reason.
	r = configCmd(t, cluster, "set", "gateway.publish_rate", "-1")
	if r.code != 1 || !strings.Contains(r.stderr, "gateway.publish_rate: -1: must be between 0") {
		t.Errorf("negative rate: %+v", r)
	}
}

// Two operators who read the same revision and write at once: exactly one
// wins, the other is told, and nothing is overwritten silently.
func TestConfigConcurrentSet(t *testing.T) {
	cluster := uniqueCluster(t)
	reg := registry(t, cluster)
	rev := written(t, configCmd(t, cluster, "set", "gateway.max_subscriptions", "10"))
	var wg sync.WaitGroup
	res := make([]result, 2)
	for i := range res {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res[i] = configCmd(t, cluster, "set", "gateway.max_subscriptions", strconv.Itoa(20+i), "--if-revision", strconv.FormatInt(rev, 10))
		}()
	}
	wg.Wait()
	var won, lost int
	for _, r := range res {
		switch {
		case r.code == 0 && writtenRe.MatchString(r.stdout):
			won++
		case r.code == 1 && strings.Contains(r.stderr, "conflict: the configuration is at revision"):
			lost++
		default:
			t.Errorf("unexpected result %+v", r)
		}
	}
	if won != 1 || lost != 1 {
		t.Fatalf("%d won, %d got a conflict; want 1 and 1", won, lost)
	}
	// A stale --if-revision is a conflict too.
	r := configCmd(t, cluster, "set", "gateway.max_subscriptions", "30", "--if-revision", strconv.FormatInt(rev, 10))
	if r.code != 1 || !strings.Contains(r.stderr, "conflict") {
		t.Errorf("stale --if-revision: %+v", r)
	}
	if cur := storedConfig(t, reg); cur.Doc.Gateway.MaxSubscriptions != 20 && cur.Doc.Gateway.MaxSubscriptions != 21 {
		t.Errorf("stored max_subscriptions %d, want the winner's", cur.Doc.Gateway.MaxSubscriptions)
	}
}

// Garbage written with the etcd client is shown as such, and the history
// marks it as not written by pubmesh config.
func TestConfigGarbageInEtcd(t *testing.T) {
	cluster := uniqueCluster(t)
	reg := registry(t, cluster)
	written(t, configCmd(t, cluster, "set", "gateway.send_queue", "64"))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := reg.Client().Put(ctx, "/pubmesh/"+cluster+"/config", `{"gateway":{"send_queue":"lots"}}`); err != nil {
		t.Fatal(err)
	}
	r := configCmd(t, cluster, "get")
	if r.code != 1 || !strings.Contains(r.stderr, "gateway.send_queue") || !strings.Contains(r.stderr, "keeps running the last good revision") {
		t.Errorf("get of garbage: %+v", r)
	}
	r = configCmd(t, cluster, "history")
	if !strings.Contains(r.stdout, "written outside pubmesh config") || !strings.Contains(r.stdout, "INVALID") {
		t.Errorf("history does not flag the outside write:\n%s", r.stdout)
	}
	// set of another key refuses to build on it (the whole document fails
	// validation); apply replaces it.
	if r := configCmd(t, cluster, "set", "gateway.publish_burst", "10"); r.code != 1 || !strings.Contains(r.stderr, "gateway.send_queue") {
		t.Errorf("set on garbage: %+v", r)
	}
	f := filepath.Join(t.TempDir(), "c.yaml")
	os.WriteFile(f, []byte("gateway: {send_queue: 32}\n"), 0o600)
	written(t, configCmd(t, cluster, "apply", "-f", f))
	if cur := storedConfig(t, reg); cur.Err != nil || cur.Doc.Gateway.SendQueue != 32 {
		t.Errorf("after apply: %+v", cur)
	}
}
