package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pubmesh/pubmesh/discovery"
)

// `pubmesh dev` brings up etcd and N ready nodes, and SIGINT (Ctrl-C) stops
// all of it, leaving no redis-server behind.
func TestDevStartsAndStopsCleanly(t *testing.T) {
	t.Parallel()
	const n = 2
	base := freePorts(t, n)
	etcdAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	gwAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	metricsAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	p := startPubmesh(t, "dev", "--nodes", fmt.Sprint(n), "--etcd-listen", etcdAddr,
		"--base-port", fmt.Sprint(base), "--data-dir", t.TempDir(), "--cluster", "devtest", "--gateway-listen", gwAddr,
		"--metrics-listen", metricsAddr)
	p.out.wait(t, `^etcd: http://`+etcdAddr, 30*time.Second)
	// A fresh etcd gets dev's configuration: history, presence and
	// join/leave for every channel.
	revLine := p.out.wait(t, `^config: history on for every channel \(namespace "\*\*": history_size 1000, history_ttl 10m, presence: true, join_leave: true\), revision [0-9]+;`, 30*time.Second)
	rev := regexp.MustCompile(`revision ([0-9]+);`).FindStringSubmatch(revLine)[1]
	p.out.wait(t, `^gateway: http://`+gwAddr+`/ `, 30*time.Second)
	adminLine := p.out.wait(t, `^admin: http://`+gwAddr+`/admin  \(the password is in .+\)$`, 30*time.Second)
	adminFile := regexp.MustCompile(`the password is in (.+)\)$`).FindStringSubmatch(adminLine)[1]
	for i := range n {
		p.out.wait(t, fmt.Sprintf(`^node dev-%d ready at 127\.0\.0\.1:%d$`, base+i, base+i), 30*time.Second)
	}
	p.out.wait(t, `^cluster ready: 2 nodes`, 10*time.Second)
	// The gateway serves the demo page and is healthy once nodes are ready.
	for _, path := range []string{"/healthz", "/", "/pubmesh.js", "/pubmesh-presence.js"} {
		resp, err := http.Get("http://" + gwAddr + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("GET %s: %s", path, resp.Status)
		}
	}
	// The gateway's fanout client and every node export the cluster
	// configuration metrics under the same names in one registry: the
	// gateway's without a label, the nodes' with their node label.
	// All run the configuration dev wrote.
	for _, url := range []string{"http://" + metricsAddr + "/metrics", "http://" + gwAddr + "/metrics"} {
		resp, err := http.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET %s: %s\n%s", url, resp.Status, body)
		}
		want := []string{"\npubmesh_config_revision " + rev + "\n", "\npubmesh_config_invalid_total 0\n"}
		for i := range n {
			want = append(want, fmt.Sprintf("\npubmesh_config_revision{node=\"dev-%d\"} %s\n", base+i, rev),
				fmt.Sprintf("\npubmesh_node_config_apply_errors_total{node=\"dev-%d\"} 0\n", base+i))
		}
		for _, w := range want {
			if !strings.Contains(string(body), w) {
				t.Errorf("GET %s lacks %q", url, strings.TrimSpace(w))
			}
		}
	}
	devAdmin(t, gwAddr, adminFile, n)
	children := waitRedisChildren(t, p.cmd.Process.Pid, n, 5*time.Second)

	r := runPubmesh(t, 30*time.Second, "nodes", "--etcd", etcdAddr, "--cluster", "devtest")
	if r.code != 0 {
		t.Fatalf("pubmesh nodes: %d %s", r.code, r.stderr)
	}
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if len(lines) != n+1 || !strings.HasPrefix(lines[0], "ID") {
		t.Fatalf("pubmesh nodes table:\n%s", r.stdout)
	}
	for i, l := range lines[1:] {
		f := strings.Fields(l)
		if len(f) < 5 || f[0] != fmt.Sprintf("dev-%d", base+i) || f[2] != string(discovery.StateReady) {
			t.Errorf("row %q: want dev-%d ... ready", l, base+i)
		}
	}

	// A client from another terminal stays connected to dev's etcd while
	// dev stops: Ctrl-C must not wait for it (it took ~8 s).
	sub := startPubmesh(t, "subscribe", "--etcd", etcdAddr, "--cluster", "devtest", "--log-level", "info", "news")
	sub.errs.wait(t, "subscribed", 30*time.Second)

	p.cmd.Process.Signal(syscall.SIGINT)
	p.out.wait(t, `^stopped$`, 30*time.Second)
	stopped := time.Now()
	if code := p.exit(t, 30*time.Second); code != 0 {
		t.Fatalf("dev exit code %d after SIGINT; stderr:\n%s", code, p.errs.String())
	}
	// etcd waits ~6 s for an outside client's watch to end; dev waits
	// 0.5 s for it. 4 s leaves room for a busy machine.
	if took := time.Since(stopped); took > 4*time.Second {
		t.Errorf("dev took %s to exit after 'stopped' with a client connected", took.Round(time.Millisecond))
	}
	sub.cmd.Process.Signal(syscall.SIGINT)
	sub.exit(t, 30*time.Second)
	for _, c := range children {
		waitGone(t, c, 5*time.Second)
	}
	if !strings.Contains(p.out.String(), "\nstopped") {
		t.Errorf("no 'stopped' line:\n%s", p.out.String())
	}
	// At the default log level the only thing on stderr is the loud
	// warning, once, that the dev gateway has no authentication.
	for _, l := range strings.Split(p.errs.String(), "\n") {
		if l != "" && !strings.Contains(l, "INSECURE") {
			t.Errorf("unexpected stderr line at the default log level: %s", l)
		}
	}
	if n := strings.Count(p.errs.String()+p.out.String(), "INSECURE"); n != 1 {
		t.Errorf("dev's gateway has no authentication and warned %d times, want once:\n%s\n%s", n, p.out.String(), p.errs.String())
	}
}

// devAdmin checks dev's admin page: no data without the session, and the
// password dev wrote (mode 0600) logs in and shows the nodes.
func devAdmin(t *testing.T, gwAddr, passwordFile string, nodes int) {
	t.Helper()
	st, err := os.Stat(passwordFile)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("%s has mode %v, want 0600", passwordFile, st.Mode().Perm())
	}
	b, _ := os.ReadFile(passwordFile)
	password := strings.TrimSpace(string(b))
	overview := "http://" + gwAddr + "/admin/api/overview"
	resp, err := http.Get(overview)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("GET %s without a session: %s, want 401", overview, resp.Status)
	}
	req, _ := http.NewRequest(http.MethodPost, "http://"+gwAddr+"/admin/login", strings.NewReader(url.Values{"password": {password}}.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Origin", "http://"+gwAddr)
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent || len(resp.Cookies()) == 0 {
		t.Fatalf("admin login with dev's password: %s, %d cookies", resp.Status, len(resp.Cookies()))
	}
	req, _ = http.NewRequest(http.MethodGet, overview, nil)
	req.AddCookie(resp.Cookies()[0])
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var o struct {
		Nodes []struct {
			ID    string `json:"id"`
			State string `json:"state"`
		} `json:"nodes"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&o); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s with the session: %s, %v", overview, resp.Status, err)
	}
	if len(o.Nodes) != nodes {
		t.Errorf("the admin overview lists %d nodes, want %d: %+v", len(o.Nodes), nodes, o.Nodes)
	}
}
