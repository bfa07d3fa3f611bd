package main

import (
	"fmt"
	"net"
	"strings"
	"testing"
	"time"
)

// Bad input is one clear line on stderr and a non-zero exit, never a panic.
func TestBadInput(t *testing.T) {
	t.Parallel()
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { taken.Close() })
	takenAddr := taken.Addr().String()
	takenPort := fmt.Sprint(taken.Addr().(*net.TCPAddr).Port)
	dead := fmt.Sprintf("127.0.0.1:%d", freePort(t)) // nothing listens here
	cluster := uniqueCluster(t)

	for _, tc := range []struct {
		name string
		args []string
		code int
		want string // in the error line
	}{
		{"nodes unreachable etcd", []string{"nodes", "--etcd", dead, "--etcd-timeout", "1s"}, 1, "unreachable: context deadline exceeded (dial tcp " + dead + ": connect: connection refused): is a cluster running there? Start one with `pubmesh dev`"},
		{"drain unreachable etcd", []string{"drain", "--etcd", dead, "--etcd-timeout", "1s", "n1"}, 1, "unreachable"},
		{"node port taken", []string{"node", "--port", takenPort}, 1, "already in use"},
		{"node missing redis-server", []string{"node", "--redis-server", "/nonexistent", "--port", fmt.Sprint(freePort(t))}, 1, `redis-server binary "/nonexistent" not found`},
		{"attach without port", []string{"node", "--attach", "nohost"}, 2, "invalid --attach"},
		{"attach bad port", []string{"node", "--attach", "1.2.3.4:99999"}, 2, "port must be 1-65535"},
		{"attach empty host", []string{"node", "--attach", ":7000"}, 2, "missing host"},
		{"bad node id", []string{"node", "--id", "a/b", "--port", fmt.Sprint(freePort(t))}, 1, "invalid id"},
		{"bad port", []string{"node", "--port", "70000"}, 1, "invalid port"},
		{"bad duration", []string{"node", "--health-interval", "soon"}, 2, "invalid value"},
		{"bad log level", []string{"node", "--log-level", "loud"}, 2, "--log-level"},
		{"unknown flag", []string{"node", "--bogus"}, 2, "flag provided but not defined"},
		{"unknown command", []string{"frob"}, 2, `unknown command "frob"`},
		{"drain without id", []string{"drain"}, 2, "want exactly one node ID"},
		{"drain unknown node", []string{"drain", "--etcd", etcdEndpoint, "--cluster", cluster, "ghost"}, 1, "no live node"},
		{"bad cluster", []string{"nodes", "--etcd", etcdEndpoint, "--cluster", "a/b"}, 1, "invalid --cluster"},
		{"dev etcd port taken", []string{"dev", "--etcd-listen", takenAddr}, 1, "already in use"},
		{"dev base port taken", []string{"dev", "--nodes", "1", "--etcd-listen", fmt.Sprintf("127.0.0.1:%d", freePort(t)), "--base-port", takenPort}, 1, "already in use (another redis-server or pubmesh dev? pick another --base-port)"},
		{"dev no nodes", []string{"dev", "--nodes", "0"}, 2, "invalid --nodes"},
		// A bad position is refused at once, before connecting: etcd is dead here.
		{"subscribe bad since", []string{"subscribe", "--etcd", dead, "--since", "nonsense", "chat"}, 2, "invalid --since: fanout: bad history position: \"nonsense\""},
		{"history bad since", []string{"history", "--etcd", dead, "--since", "p1.!!", "chat"}, 2, "invalid --since"},
		{"subscribe since with a pattern", []string{"subscribe", "--etcd", dead, "--pattern", "--since", "p1.AA", "chat.*"}, 2, "give exactly one CHANNEL, not a pattern"},
		{"gateway presence TTL too short", []string{"gateway", "--insecure", "--presence-ttl", "100ms"}, 2, "invalid --presence-ttl 100ms: at least 1s"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := runPubmesh(t, 30*time.Second, tc.args...)
			if r.code != tc.code {
				t.Errorf("exit code %d, want %d", r.code, tc.code)
			}
			msg := strings.TrimRight(r.stderr, "\n")
			if strings.Count(msg, "\n") != 0 || !strings.HasPrefix(msg, "pubmesh: ") {
				t.Errorf("stderr is not one 'pubmesh: ...' line: %q", r.stderr)
			}
			if !strings.Contains(msg, tc.want) {
				t.Errorf("stderr %q does not contain %q", msg, tc.want)
			}
			if strings.Contains(r.stderr, "panic") || strings.Contains(r.stderr, "goroutine ") {
				t.Errorf("panic: %s", r.stderr)
			}
		})
	}
}

func TestHelpListsEnvAndDefaults(t *testing.T) {
	t.Parallel()
	for _, cmd := range []string{"dev", "node", "nodes", "clients", "drain", "publish", "subscribe", "history", "gateway", "token", "bench",
		"config get", "config set", "config unset", "config apply", "config history", "config rollback"} {
		r := runPubmesh(t, 30*time.Second, append(strings.Fields(cmd), "--help")...)
		if r.code != 0 {
			t.Fatalf("%s --help: exit %d", cmd, r.code)
		}
		for _, line := range strings.Split(r.stdout, "\n") {
			line = strings.TrimSpace(line)
			if !strings.HasPrefix(line, "--") || strings.HasPrefix(line, "--help") {
				continue
			}
			if !strings.Contains(line, "[$PUBMESH_") {
				t.Errorf("%s: flag without env var: %s", cmd, line)
			}
			if !strings.Contains(line, "(default: ") {
				t.Errorf("%s: flag without default in its usage: %s", cmd, line)
			}
		}
	}
}

func TestUptime(t *testing.T) {
	t.Parallel()
	for d, want := range map[time.Duration]string{
		-time.Second:                   "0s",
		45 * time.Second:               "45s",
		12*time.Minute + 3*time.Second: "12m3s",
		5*time.Hour + 2*time.Minute:    "5h2m",
		76 * time.Hour:                 "3d4h",
	} {
		if got := uptime(d); got != want {
			t.Errorf("uptime(%s) = %q, want %q", d, got, want)
		}
	}
}
