package broker_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/pubmesh/pubmesh/broker"
	"github.com/pubmesh/pubmesh/discovery"
	"github.com/pubmesh/pubmesh/internal/devcerts"
	"github.com/pubmesh/pubmesh/internal/testredis"
	"github.com/pubmesh/pubmesh/internal/testsec"
)

// A node with TLS (mutual), a pub/sub-only ACL user and a second password
// for rotation: it registers with tls, its health checks and drain speak
// TLS and AUTH, no password is in redis.conf, the child's command line or
// etcd, and Redis refuses everyone without the right credentials.
func TestAgentTLSAndACL(t *testing.T) {
	t.Parallel()
	certs, err := devcerts.Generate(filepath.Join(t.TempDir(), "tls"), devcerts.Options{})
	if err != nil {
		t.Fatal(err)
	}
	reg := newRegistry(t)
	w := watch(t, reg)
	cfg := fastConfig(t, reg)
	cfg.Username, cfg.Password, cfg.ExtraPasswords = "app", "main-pw-6f1d2c", []string{"next-pw-93be41"}
	cfg.TLSCertFile, cfg.TLSKeyFile, cfg.TLSClientCAFile = certs.Redis.Cert, certs.Redis.Key, certs.CA
	// Only a drain handshake that reaches Redis ends the drain: one that
	// cannot would hold it until Shutdown's context ends.
	cfg.DrainTimeout = 10 * time.Minute
	var logs *syncBuffer
	cfg.Logger, logs = testLogs(t)
	a, err := broker.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() { errc <- a.Run(context.Background()) }()
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			a.Shutdown(context.Background())
		}
	})
	w.until(t, 20*time.Second, "ready", inState(cfg.ID, discovery.StateReady))
	n, _ := node(w.last, cfg.ID)
	if !n.TLS {
		t.Errorf("registered without tls: %+v", n)
	}
	secrets := []string{cfg.Password, cfg.ExtraPasswords[0]}

	conf, err := os.ReadFile(filepath.Join(cfg.DataDir, "redis.conf"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"user default off", "user app on", "port 0\n", fmt.Sprintf("tls-port %d\n", cfg.Port), "tls-auth-clients yes"} {
		if !strings.Contains(string(conf), want) {
			t.Errorf("redis.conf has no %q:\n%s", want, conf)
		}
	}
	testsec.NoSecrets(t, "redis.conf", string(conf), secrets...)
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", a.PID()))
	if err != nil {
		t.Fatal(err)
	}
	testsec.NoSecrets(t, "the redis-server command line", string(cmdline), secrets...)
	testsec.NoSecrets(t, "etcd", testsec.EtcdValues(t, reg.Client(), discovery.DefaultPrefix+"/"+reg.Cluster()+"/"), secrets...)

	client := func(user, pass string, cert devcerts.Pair) *redis.Client {
		tc := testsec.Client(t, certs.CA, cert)
		rdb := redis.NewClient(&redis.Options{Addr: n.Addr, Username: user, Password: pass, TLSConfig: tc, MaxRetries: -1, DisableIdentity: true, DialTimeout: 2 * time.Second})
		t.Cleanup(func() { rdb.Close() })
		return rdb
	}
	ctx := context.Background()
	app := client("app", cfg.Password, certs.Client)
	if err := app.Ping(ctx).Err(); err != nil {
		t.Fatalf("PING with the right credentials: %v", err)
	}
	if err := app.Publish(ctx, "news", "x").Err(); err != nil {
		t.Errorf("PUBLISH: %v", err)
	}
	if err := app.ConfigGet(ctx, "port").Err(); err == nil || !strings.HasPrefix(err.Error(), "NOPERM") {
		t.Errorf("CONFIG GET as the pub/sub user: %v, want NOPERM", err)
	}
	if err := client("app", cfg.ExtraPasswords[0], certs.Client).Ping(ctx).Err(); err != nil {
		t.Errorf("PING with the extra (rotation) password: %v", err)
	}
	for _, tc := range []struct {
		name string
		rdb  *redis.Client
		want string
	}{
		{"wrong password", client("app", "wrong", certs.Client), "WRONGPASS"},
		{"the disabled default user", client("", cfg.Password, certs.Client), "WRONGPASS"},
		{"no password", client("", "", certs.Client), "NOAUTH"},
		{"no client certificate", client("app", cfg.Password, devcerts.Pair{}), ""},
	} {
		err := tc.rdb.Ping(ctx).Err()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error with %q", tc.name, err, tc.want)
		}
		t.Logf("%s: %v", tc.name, err)
	}
	if err := testredis.Ping(ctx, n.Addr); err == nil {
		t.Error("a plain-text PING to the TLS port was answered")
	}

	// The drain handshake's CLIENT LIST goes over TLS with AUTH too: a
	// failure there would hold the drain until Shutdown's context ends (a
	// hang bound, not a speed bound), and it would not log its completion.
	sctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	if err := a.Shutdown(sctx); err != nil {
		t.Fatalf("Shutdown: %v: the drain handshake could not reach Redis", err)
	}
	stopped = true
	if l := logs.String(); !strings.Contains(l, "drain handshake complete") || strings.Contains(l, "not flushed") {
		t.Errorf("the drain handshake did not complete over TLS with AUTH")
	}
	if err := <-errc; err != nil {
		t.Errorf("Run: %v", err)
	}
}

// A node that anyone could reach is refused without a password, before
// anything is bound; TLS files are checked before the child starts.
func TestValidateRefusesTheUnsafe(t *testing.T) {
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
	old := testsec.Expired(t, certs, devcerts.Server)
	// No redis-server: a config that passes the security checks fails on
	// the binary, before it binds anything.
	base := broker.Config{ID: "n1", Port: 7000, RedisServer: "/nonexistent/redis-server"}
	for _, tc := range []struct {
		name string
		edit func(*broker.Config)
		want string
	}{
		{"public bind without a password", func(c *broker.Config) { c.Bind = "0.0.0.0" },
			"refusing to serve Redis on 0.0.0.0 without a password"},
		{"public bind with --insecure", func(c *broker.Config) { c.Bind = "0.0.0.0"; c.Insecure = true }, "not found"},
		{"public bind with a password", func(c *broker.Config) { c.Bind = "0.0.0.0"; c.Password = "pw" }, "not found"},
		{"user without a password", func(c *broker.Config) { c.Username = "app" }, "needs a password"},
		{"bad user name", func(c *broker.Config) { c.Username = "a b"; c.Password = "pw" }, "invalid Redis user"},
		{"password with a line break", func(c *broker.Config) { c.Password = "a\nb" }, "line break"},
		{"certificate without key", func(c *broker.Config) { c.TLSCertFile = certs.Redis.Cert }, "both a certificate and a key"},
		{"expired certificate", func(c *broker.Config) { c.TLSCertFile, c.TLSKeyFile = old.Cert, old.Key }, "not now"},
		{"client CA that did not sign the certificate", func(c *broker.Config) {
			c.TLSCertFile, c.TLSKeyFile, c.TLSClientCAFile = certs.Redis.Cert, certs.Redis.Key, other.CA
		}, "must be signed by"},
		{"TLS with attach", func(c *broker.Config) {
			c.Attach = "127.0.0.1:6379"
			c.TLSCertFile, c.TLSKeyFile = certs.Redis.Cert, certs.Redis.Key
		}, "cannot be used with --attach"},
		{"valid TLS", func(c *broker.Config) {
			c.TLSCertFile, c.TLSKeyFile, c.TLSClientCAFile = certs.Redis.Cert, certs.Redis.Key, certs.CA
		}, "not found"},
	} {
		cfg := base
		tc.edit(&cfg)
		err := cfg.Validate()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error with %q", tc.name, err, tc.want)
		}
	}
}

// The clients' ACL user may run the history script and read and write
// history on the history keys (~pm:h*) only: a script's commands are
// checked against the same ACL, so it cannot reach other keys either.
// Everything else stays refused, SCAN and KEYS included.
func TestACLHistoryCommands(t *testing.T) {
	t.Parallel()
	reg := newRegistry(t)
	cfg := fastConfig(t, reg)
	cfg.Username, cfg.Password = "app", "app-pw-3d5a"
	a := start(t, cfg)
	waitReady(t, a)
	ctx := context.Background()
	rdb := nodeClient(t, a.Addr(), cfg, nil)
	const publish = `redis.call('XADD', KEYS[1], '*', 'm', ARGV[1], 'pt', '0', 'r', '1')
redis.call('PEXPIRE', KEYS[1], 60000)
return redis.call('PUBLISH', ARGV[2], ARGV[1])`
	sha, err := rdb.ScriptLoad(ctx, publish).Result()
	if err != nil {
		t.Fatalf("SCRIPT LOAD: %v", err)
	}
	// A script's commands are checked too: a command the user may not run,
	// or a key outside ~pm:h* that the script did not declare.
	const sneakyCommand = `return redis.call('SET', 'pm:h:x', 'x')`
	const sneakyKey = `return redis.call('XADD', 'other', '*', 'm', 'x')`
	for _, tc := range []struct {
		args []any
		ok   bool
	}{
		{[]any{"EVAL", publish, 1, "pm:h:news", "payload", "news"}, true},
		{[]any{"EVALSHA", sha, 1, "pm:h:news", "payload", "news"}, true},
		{[]any{"SCRIPT", "EXISTS", sha}, true},
		{[]any{"XADD", "pm:h:c", "*", "m", "x", "pt", "0", "r", "1"}, true},
		{[]any{"XADD", "pm:ha:" + oldRun + ":c", "5-1", "m", "x", "pt", "0", "r", "1"}, true},
		{[]any{"XRANGE", "pm:h:c", "-", "+"}, true},
		{[]any{"XREVRANGE", "pm:h:c", "+", "-", "COUNT", 1}, true},
		{[]any{"XINFO", "STREAM", "pm:h:c"}, true},
		{[]any{"PEXPIRE", "pm:h:c", 60000}, true},
		{[]any{"PTTL", "pm:h:c"}, true},
		{[]any{"SADD", "pm:hx:c", "pm:ha:" + oldRun + ":c"}, true},
		{[]any{"SMEMBERS", "pm:hx:c"}, true},
		{[]any{"SSCAN", "pm:hx:c", 0}, true},

		{[]any{"EVAL", publish, 1, "other", "payload", "news"}, false},
		{[]any{"EVAL", sneakyCommand, 0}, false},
		{[]any{"EVAL", sneakyKey, 0}, false},
		{[]any{"XADD", "other", "*", "m", "x"}, false},
		{[]any{"XRANGE", "other", "-", "+"}, false},
		{[]any{"PEXPIRE", "other", 1000}, false},
		{[]any{"SADD", "other", "x"}, false},
		{[]any{"SCAN", 0}, false},
		{[]any{"KEYS", "*"}, false},
		{[]any{"GET", "pm:h:c"}, false},
		{[]any{"SET", "pm:h:x", "1"}, false},
		{[]any{"DEL", "pm:h:c"}, false},
		{[]any{"XTRIM", "pm:h:c", "MAXLEN", 0}, false},
		{[]any{"EXPIRE", "pm:h:c", 0}, false},
		{[]any{"FLUSHALL"}, false},
		{[]any{"SCRIPT", "FLUSH"}, false},
		{[]any{"CONFIG", "GET", "maxmemory"}, false},
	} {
		name := strings.TrimSpace(fmt.Sprintln(tc.args[:min(2, len(tc.args))]...))
		err := rdb.Do(ctx, tc.args...).Err()
		switch {
		case tc.ok && err != nil:
			t.Errorf("%s: %v, want allowed", name, err)
		case !tc.ok && (err == nil || !strings.Contains(err.Error(), "NOPERM") && !strings.Contains(err.Error(), "user executing the script can't")):
			t.Errorf("%s: %v, want NOPERM", name, err)
		}
	}
	if n, err := rdb.XLen(ctx, "pm:h:news").Result(); err == nil {
		t.Errorf("XLEN allowed (%d)", n)
	}
}
