package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/pubmesh/pubmesh/discovery"
	"github.com/pubmesh/pubmesh/internal/devcerts"
	"github.com/pubmesh/pubmesh/internal/embedetcd"
	"github.com/pubmesh/pubmesh/internal/testredis"
	"github.com/pubmesh/pubmesh/internal/testsec"
)

// cleanEnv is the test's environment without PUBMESH_* variables (a
// developer's shell may have sourced a dev cluster's env.sh), plus extra.
func cleanEnv(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PUBMESH_") && !strings.HasPrefix(kv, "REDISCLI_AUTH=") {
			env = append(env, kv)
		}
	}
	return append(env, extra...)
}

// writeSecret writes a password file with mode 0600.
func writeSecret(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// procFile reads /proc/<pid>/<name> (cmdline, environ); NULs become spaces.
func procFile(t *testing.T, pid int, name string) string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/%s", pid, name))
	if err != nil {
		t.Fatalf("read /proc/%d/%s: %v", pid, name, err)
	}
	return strings.ReplaceAll(string(b), "\x00", " ")
}

// etcdValues is every key and value under /pubmesh/ in etcd.
func etcdValues(t *testing.T, cfg discovery.EtcdConfig) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cli, err := discovery.Dial(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	return testsec.EtcdValues(t, cli, discovery.DefaultPrefix+"/")
}

// A node serving TLS (mutual) with a password, registered through an etcd
// with mutual TLS and a root user, and publish/subscribe through it, all as
// real processes. Then the refusals: a wrong Redis password, a wrong CA for
// Redis or etcd, a client without TLS settings, a plain-text client, an
// expired certificate, a wrong etcd password. No secret is on any command
// line or in etcd.
func TestSecureNodeEndToEnd(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	certs, err := devcerts.Generate(filepath.Join(dir, "tls"), devcerts.Options{})
	if err != nil {
		t.Fatal(err)
	}
	other, err := devcerts.Generate(filepath.Join(dir, "other"), devcerts.Options{})
	if err != nil {
		t.Fatal(err)
	}
	const etcdPW, redisPW, nextPW = "etcd-pw-5b1e07c2", "redis-pw-a41f9d3e", "redis-next-pw-77c0"
	srv, err := embedetcd.Start(embedetcd.Config{
		TLS:          &embedetcd.TLS{CertFile: certs.Etcd.Cert, KeyFile: certs.Etcd.Key, ClientCAFile: certs.CA},
		RootPassword: etcdPW,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	etcdAddr := strings.TrimPrefix(srv.Endpoint(), "https://")
	etcdPWFile := writeSecret(t, dir, "etcd-pw", etcdPW+"\n")
	// The node accepts a second password (rotation); clients use the first.
	redisPWFile := writeSecret(t, dir, "redis-pw", redisPW+"\n"+nextPW+"\n")
	cluster := uniqueCluster(t)

	// Every command gets etcd's settings from the environment, like a
	// shell that sourced env.sh; the node's etcd password comes from
	// PUBMESH_ETCD_PASSWORD, the clients' from a file.
	etcdEnv := []string{
		"PUBMESH_ETCD=" + etcdAddr, // no scheme: https:// because a CA is set
		"PUBMESH_ETCD_CACERT=" + certs.CA, "PUBMESH_ETCD_CERT=" + certs.Client.Cert, "PUBMESH_ETCD_KEY=" + certs.Client.Key,
		"PUBMESH_ETCD_USER=root", "PUBMESH_CLUSTER=" + cluster,
	}
	clientEnv := append(cleanEnv(etcdEnv...),
		"PUBMESH_ETCD_PASSWORD_FILE="+etcdPWFile, "PUBMESH_REDIS_PASSWORD_FILE="+redisPWFile,
		"PUBMESH_REDIS_CACERT="+certs.CA, "PUBMESH_REDIS_CERT="+certs.Client.Cert, "PUBMESH_REDIS_KEY="+certs.Client.Key)
	port := freePort(t)
	addr := "127.0.0.1:" + strconv.Itoa(port)
	node := startPubmeshEnv(t, cleanEnv(append(etcdEnv, "PUBMESH_ETCD_PASSWORD="+etcdPW)...),
		"node", "--id", "n1", "--port", strconv.Itoa(port), "--redis-password-file", redisPWFile,
		"--tls-cert", certs.Redis.Cert, "--tls-key", certs.Redis.Key, "--tls-client-ca", certs.CA,
		"--health-interval", "300ms", "--join-timeout", "2s", "--drain-timeout", "2s", "--lease-ttl", "2s")

	etcdCfg := discovery.EtcdConfig{Endpoints: []string{srv.Endpoint()}, TLS: testsec.Client(t, certs.CA, certs.Client), Username: "root", Password: etcdPW}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	cli, err := discovery.Dial(ctx, etcdCfg)
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	reg, err := discovery.New(cli, discovery.Config{Cluster: cluster})
	if err != nil {
		t.Fatal(err)
	}
	watchUntil(t, reg, 30*time.Second, "ready", func(s discovery.Snapshot) bool { return state(s, "n1") == discovery.StateReady })
	if n, _, _ := reg.List(context.Background()); len(n) != 1 || !n[0].TLS {
		t.Fatalf("registered node: %+v, want one node with tls", n)
	}

	// The happy path: subscribe and publish as separate processes.
	sub := startPubmeshEnv(t, clientEnv, "subscribe", "--log-level", "info", "--count", "1", "news")
	sub.errs.wait(t, "subscribed", 15*time.Second)
	if r := runPubmeshEnv(t, 30*time.Second, clientEnv, "publish", "news", "hello over TLS"); r.code != 0 {
		t.Fatalf("publish: exit %d: %s", r.code, r.stderr)
	}
	sub.out.wait(t, "^hello over TLS$", 10*time.Second)
	if code := sub.exit(t, 10*time.Second); code != 0 {
		t.Fatalf("subscribe exit %d: %s", code, sub.errs.String())
	}

	// A gateway with HTTPS/WSS, an API key from a file, and the same etcd
	// and Redis settings: a message published over HTTPS reaches a
	// WebSocket over TLS.
	const apiKey = "api-key-3e8d0f6a2b"
	keyFile := writeSecret(t, dir, "api-keys", apiKey+"\n")
	gwAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	gw := startPubmeshEnv(t, clientEnv, "gateway", "--listen", gwAddr, "--api-key-file", keyFile,
		"--tls-cert", certs.Gateway.Cert, "--tls-key", certs.Gateway.Key)
	gw.out.wait(t, "^gateway: https://"+gwAddr, 30*time.Second)
	ws := wssSubscribe(t, gwAddr, certs.CA, "", apiKey, "news")
	req, _ := http.NewRequest("POST", "https://"+gwAddr+"/api/publish/news", strings.NewReader(`{"over":"https"}`))
	req.Header.Set("Authorization", "Bearer "+apiKey)
	resp, err := httpsClient(t, certs.CA).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("POST /api/publish/news over HTTPS: %s", resp.Status)
	}
	if got := wssMessage(t, ws); got != `{"over":"https"}` {
		t.Errorf("over WSS: data %s", got)
	}
	if strings.Contains(gw.errs.String(), "visible to every user") {
		t.Errorf("the gateway warned about a secret on its command line:\n%s", gw.errs.String())
	}

	// No secret on a command line (readable by every user) nor in the
	// environment of the redis-server child, nor in etcd.
	secrets := []string{etcdPW, redisPW, nextPW, apiKey}
	testsec.NoSecrets(t, "the gateway's command line", procFile(t, gw.cmd.Process.Pid, "cmdline"), secrets...)
	children := waitRedisChildren(t, node.cmd.Process.Pid, 1, 5*time.Second)
	testsec.NoSecrets(t, "the node's command line", procFile(t, node.cmd.Process.Pid, "cmdline"), secrets...)
	for _, c := range children {
		testsec.NoSecrets(t, "the redis-server command line", procFile(t, c, "cmdline"), secrets...)
		testsec.NoSecrets(t, "the redis-server environment", procFile(t, c, "environ"), secrets...)
	}
	testsec.NoSecrets(t, "etcd", etcdValues(t, etcdCfg), secrets...)

	// Refusals, each a one-line error that says why.
	ca2 := other.CA
	for _, tc := range []struct {
		name string
		env  []string
		args []string
		want []string
	}{
		{"wrong Redis password", with(clientEnv, "PUBMESH_REDIS_PASSWORD_FILE=", "PUBMESH_REDIS_PASSWORD=wrong"),
			[]string{"publish", "news", "x"}, []string{"node n1 (" + addr + ")", "WRONGPASS"}},
		{"wrong Redis password, subscribe", with(clientEnv, "PUBMESH_REDIS_PASSWORD_FILE=", "PUBMESH_REDIS_PASSWORD=wrong"),
			[]string{"subscribe", "news"}, []string{"pubmesh: fanout: node n1 (" + addr + "): ", "WRONGPASS"}},
		{"wrong Redis CA", with(clientEnv, "PUBMESH_REDIS_CACERT="+ca2),
			[]string{"subscribe", "news"}, []string{"node n1 (" + addr + ")", "certificate signed by unknown authority"}},
		{"no Redis TLS settings", with(clientEnv, "PUBMESH_REDIS_CACERT=", "PUBMESH_REDIS_CERT=", "PUBMESH_REDIS_KEY="),
			[]string{"subscribe", "news"}, []string{"node n1 (" + addr + ")", "the node requires TLS"}},
		{"wrong etcd CA", with(clientEnv, "PUBMESH_ETCD_CACERT="+ca2),
			[]string{"nodes", "--etcd-timeout", "1s"}, []string{"certificate signed by unknown authority"}},
		{"wrong etcd password", with(clientEnv, "PUBMESH_ETCD_PASSWORD_FILE=", "PUBMESH_ETCD_PASSWORD=wrong"),
			[]string{"nodes", "--etcd-timeout", "2s"}, []string{"authentication failed"}},
		{"plain http to etcd", with(clientEnv, "PUBMESH_ETCD=http://"+etcdAddr, "PUBMESH_ETCD_CACERT=", "PUBMESH_ETCD_CERT=", "PUBMESH_ETCD_KEY="),
			[]string{"nodes", "--etcd-timeout", "1s"}, []string{"speaks TLS: use https://"}},
	} {
		r := runPubmeshEnv(t, 30*time.Second, tc.env, tc.args...)
		if r.code != 1 {
			t.Errorf("%s: exit %d, want 1; stderr: %s", tc.name, r.code, r.stderr)
		}
		last := lastLine(r.stderr)
		for _, w := range tc.want {
			if !strings.Contains(last, w) {
				t.Errorf("%s: error %q does not say %q", tc.name, last, w)
			}
		}
		t.Logf("%s: %s", tc.name, last)
	}
	if err := testredis.Ping(context.Background(), addr); err == nil {
		t.Error("a plain-text PING to the TLS node was answered")
	}

	// An expired client certificate is refused before anything connects.
	old := testsec.Expired(t, certs, devcerts.Client)
	r := runPubmeshEnv(t, 30*time.Second, with(clientEnv, "PUBMESH_ETCD_CERT="+old.Cert, "PUBMESH_ETCD_KEY="+old.Key), "nodes")
	if r.code == 0 || !strings.Contains(r.stderr, "expired on") {
		t.Errorf("expired etcd client certificate: exit %d: %s", r.code, r.stderr)
	}
	r = runPubmeshEnv(t, 30*time.Second, with(clientEnv, "PUBMESH_REDIS_CERT="+old.Cert, "PUBMESH_REDIS_KEY="+old.Key), "publish", "news", "x")
	if r.code == 0 || !strings.Contains(r.stderr, "expired on") {
		t.Errorf("expired Redis client certificate: exit %d: %s", r.code, r.stderr)
	}

	gw.cmd.Process.Signal(syscall.SIGTERM)
	if code := gw.exit(t, 20*time.Second); code != 0 {
		t.Errorf("gateway exit %d after SIGTERM: %s", code, gw.errs.String())
	}
	node.cmd.Process.Signal(syscall.SIGTERM)
	if code := node.exit(t, 20*time.Second); code != 0 {
		t.Fatalf("node exit %d after SIGTERM: %s", code, node.errs.String())
	}
	for _, c := range children {
		waitGone(t, c, 5*time.Second)
	}
}

// with returns a copy of env with extra added (later entries win).
func with(env []string, extra ...string) []string {
	return append(append([]string(nil), env...), extra...)
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

// A node on a non-loopback address without a password refuses to start,
// before it binds anything; credentials never come from a flag's value.
func TestNodeRefusesTheUnsafe(t *testing.T) {
	t.Parallel()
	r := runPubmesh(t, 30*time.Second, "node", "--etcd", etcdEndpoint, "--bind", "0.0.0.0", "--port", strconv.Itoa(freePort(t)))
	if r.code != 1 || !strings.Contains(r.stderr, "refusing to serve Redis on 0.0.0.0 without a password") || !strings.Contains(r.stderr, "--insecure") {
		t.Errorf("node --bind 0.0.0.0 without a password: exit %d: %s", r.code, r.stderr)
	}
	r = runPubmesh(t, 30*time.Second, "nodes", "--etcd", etcdEndpoint, "--etcd-user", "root:pw")
	if r.code != 2 || !strings.Contains(r.stderr, "never on the command line") {
		t.Errorf("--etcd-user root:pw: exit %d: %s", r.code, r.stderr)
	}
	r = runPubmesh(t, 30*time.Second, "nodes", "--etcd", etcdEndpoint, "--etcd-user", "root")
	if r.code != 2 || !strings.Contains(r.stderr, "needs a password") {
		t.Errorf("--etcd-user without a password: exit %d: %s", r.code, r.stderr)
	}
}

// `pubmesh dev --secure` as a user runs it: the printed env.sh makes
// subscribe, publish and token work (through a pub/sub-only ACL user), its
// gateway serves WSS; the nodes refuse plain text; secrets are in 0600 files
// and on no command line.
func TestDevSecure(t *testing.T) {
	t.Parallel()
	const n = 2
	base := freePorts(t, n)
	etcdAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	dir := t.TempDir()
	gwAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	p := startPubmeshEnv(t, cleanEnv(), "dev", "--secure", "--nodes", strconv.Itoa(n), "--etcd-listen", etcdAddr,
		"--base-port", strconv.Itoa(base), "--data-dir", dir, "--cluster", "secure-dev", "--gateway-listen", gwAddr,
		"--redis-user", "app") // a pub/sub-only ACL user, with a generated password
	p.out.wait(t, `^etcd: https://`+etcdAddr, 30*time.Second)
	p.out.wait(t, `^gateway: https://`+gwAddr+`/ .*wss://`, 30*time.Second)
	line := p.out.wait(t, `^to use it from another shell: source `, 10*time.Second)
	envFile := strings.Trim(strings.TrimPrefix(line, "to use it from another shell: source "), "'")
	p.out.wait(t, `^cluster ready: 2 nodes`, 30*time.Second)
	env := cleanEnv(readEnvFile(t, envFile)...)
	if !slices.Contains(env, "PUBMESH_REDIS_USER=app") {
		t.Errorf("env.sh does not set PUBMESH_REDIS_USER=app")
	}

	for _, f := range []string{envFile, filepath.Join(dir, "secrets", "etcd-password"), filepath.Join(dir, "secrets", "redis-password"),
		filepath.Join(dir, "tls", "ca.key"), filepath.Join(dir, "tls", "redis.key"), filepath.Join(dir, "tls", "client.key")} {
		if st, err := os.Stat(f); err != nil || st.Mode().Perm() != 0o600 {
			t.Errorf("%s: %v %v, want mode 0600", f, st.Mode(), err)
		}
	}

	// A browser's view: a token from `pubmesh token` (the secret comes
	// through env.sh), a WebSocket over TLS verified with the dev CA.
	tok := runPubmeshEnv(t, 30*time.Second, env, "token", "--sub", "tester", "--subscribe", "news", "--ttl", "5m")
	if tok.code != 0 {
		t.Fatalf("token: exit %d: %s", tok.code, tok.stderr)
	}
	caFile := filepath.Join(dir, "tls", "ca.crt")
	ws := wssSubscribe(t, gwAddr, caFile, strings.TrimSpace(tok.stdout), "", "news")
	if resp, err := httpsClient(t, caFile).Get("https://" + gwAddr + "/healthz"); err != nil || resp.StatusCode != http.StatusOK {
		t.Errorf("GET https://%s/healthz: %v %v", gwAddr, resp, err)
	} else {
		resp.Body.Close()
	}
	if resp, err := http.Get("http://" + gwAddr + "/healthz"); err == nil {
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			t.Error("the --secure gateway answered plain HTTP")
		}
	}

	sub := startPubmeshEnv(t, env, "subscribe", "--log-level", "info", "--count", "1", "news")
	sub.errs.wait(t, "subscribed", 15*time.Second)
	if r := runPubmeshEnv(t, 30*time.Second, env, "publish", "news", "hi"); r.code != 0 {
		t.Fatalf("publish: exit %d: %s", r.code, r.stderr)
	}
	sub.out.wait(t, "^hi$", 10*time.Second)
	if got := wssMessage(t, ws); got != `"hi"` {
		t.Errorf("over WSS: data %s, want \"hi\"", got)
	}
	if code := sub.exit(t, 10*time.Second); code != 0 {
		t.Fatalf("subscribe: exit %d: %s", code, sub.errs.String())
	}
	r := runPubmeshEnv(t, 30*time.Second, env, "nodes")
	if r.code != 0 || strings.Count(r.stdout, " ready ") != n {
		t.Errorf("nodes: exit %d:\n%s%s", r.code, r.stdout, r.stderr)
	}
	if err := testredis.Ping(context.Background(), fmt.Sprintf("127.0.0.1:%d", base)); err == nil {
		t.Error("a plain-text PING to a --secure node was answered")
	}

	var secrets []string
	for _, f := range []string{"etcd-password", "redis-password", "jwt-secret"} {
		b, err := os.ReadFile(filepath.Join(dir, "secrets", f))
		if err != nil || len(strings.TrimSpace(string(b))) < 20 {
			t.Fatalf("%s: %q %v", f, b, err)
		}
		secrets = append(secrets, strings.TrimSpace(string(b)))
	}
	envText, _ := os.ReadFile(envFile)
	testsec.NoSecrets(t, "env.sh", string(envText), secrets...)
	children := waitRedisChildren(t, p.cmd.Process.Pid, n, 5*time.Second)
	testsec.NoSecrets(t, "dev's command line", procFile(t, p.cmd.Process.Pid, "cmdline"), secrets...)
	for _, c := range children {
		testsec.NoSecrets(t, "a redis-server command line", procFile(t, c, "cmdline"), secrets...)
	}

	p.cmd.Process.Signal(syscall.SIGINT)
	if code := p.exit(t, 30*time.Second); code != 0 {
		t.Fatalf("dev exit %d after SIGINT: %s", code, p.errs.String())
	}
	for _, c := range children {
		waitGone(t, c, 5*time.Second)
	}
}

// wssSubscribe opens wss://addr/ws with the CA and a credential (a JWT in
// the URL, or an API key as a Bearer header), subscribes to channel and
// waits for the ok.
func wssSubscribe(t *testing.T, addr, ca, token, apiKey, channel string) *websocket.Conn {
	t.Helper()
	d := websocket.Dialer{TLSClientConfig: &tls.Config{RootCAs: testsec.Pool(t, ca)}, HandshakeTimeout: 10 * time.Second}
	u := "wss://" + addr + "/ws"
	hdr := http.Header{}
	if token != "" {
		u += "?token=" + url.QueryEscape(token)
	}
	if apiKey != "" {
		hdr.Set("Authorization", "Bearer "+apiKey)
	}
	conn, resp, err := d.Dial(u, hdr)
	if err != nil {
		t.Fatalf("dial %s: %v (%v)", u, err, resp)
	}
	t.Cleanup(func() { conn.Close() })
	if err := conn.WriteJSON(map[string]any{"op": "subscribe", "channel": channel, "id": 1}); err != nil {
		t.Fatal(err)
	}
	var reply map[string]any
	conn.SetReadDeadline(time.Now().Add(15 * time.Second))
	if err := conn.ReadJSON(&reply); err != nil || reply["op"] != "ok" {
		t.Fatalf("subscribe over WSS: %v %v", reply, err)
	}
	return conn
}

// wssMessage waits for the next message frame and returns its data.
func wssMessage(t *testing.T, conn *websocket.Conn) string {
	t.Helper()
	conn.SetReadDeadline(time.Now().Add(15 * time.Second))
	for {
		var f struct {
			Op   string          `json:"op"`
			Data json.RawMessage `json:"data"`
		}
		if err := conn.ReadJSON(&f); err != nil {
			t.Fatalf("reading over WSS: %v", err)
		}
		if f.Op == "message" {
			return string(f.Data)
		}
	}
}

// httpsClient trusts ca.
func httpsClient(t *testing.T, ca string) *http.Client {
	t.Helper()
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: testsec.Pool(t, ca)}}}
}

// readEnvFile reads the `export K='V'` lines of an env.sh.
func readEnvFile(t *testing.T, path string) []string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	re := regexp.MustCompile(`^export ([A-Z_]+)='([^']*)'$`)
	var env []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if m := re.FindStringSubmatch(sc.Text()); m != nil {
			env = append(env, m[1]+"="+m[2])
		}
	}
	if len(env) < 8 {
		t.Fatalf("%s: only %d variables", path, len(env))
	}
	return env
}
