package netns_test

import (
	"context"
	"net"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pubmesh/pubmesh/internal/netns"
	"github.com/pubmesh/pubmesh/internal/testredis"
)

// TestLinkDownUp: a redis-server inside a namespace answers from the host;
// with the link down a PING hangs (the packets vanish); with it up again
// the server answers; Close leaves no namespace and no interface.
func TestLinkDownUp(t *testing.T) {
	if err := netns.Available(); err != nil {
		t.Skip(err)
	}
	ns, err := netns.New()
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	if !strings.HasPrefix(ns.IP, "10.213.") || !strings.HasPrefix(ns.HostIP, "10.213.") {
		t.Fatalf("addresses %s, %s", ns.HostIP, ns.IP)
	}
	addr := net.JoinHostPort(ns.IP, "6399")
	cmd := ns.Command("redis-server", "--bind", ns.IP, "--port", "6399", "--save", "", "--appendonly", "no",
		"--protected-mode", "no", "--daemonize", "no", "--loglevel", "warning")
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	defer func() { cmd.Process.Kill(); <-done }()

	ping := func(within time.Duration) error {
		ctx, cancel := context.WithTimeout(context.Background(), within)
		defer cancel()
		return testredis.Ping(ctx, addr)
	}
	deadline := time.Now().Add(10 * time.Second)
	for ping(time.Second) != nil {
		if time.Now().After(deadline) {
			t.Fatal("redis-server in the namespace does not answer")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := ns.LinkDown(); err != nil {
		t.Fatal(err)
	}
	if err := ping(500 * time.Millisecond); err == nil {
		t.Fatal("PING answered with the link down")
	} else if ne, ok := err.(net.Error); !ok || !ne.Timeout() {
		t.Fatalf("PING with the link down: %v, want a timeout (packets dropped, not refused)", err)
	}
	if err := ns.LinkUp(); err != nil {
		t.Fatal(err)
	}
	deadline = time.Now().Add(10 * time.Second)
	for ping(time.Second) != nil {
		if time.Now().After(deadline) {
			t.Fatal("no answer after the link came up")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := ns.Close(); err != nil {
		t.Fatal(err)
	}
	<-done // Close killed the server
	out, _ := exec.Command("ip", "netns", "list").Output()
	if strings.Contains(string(out), ns.Name) {
		t.Errorf("namespace %s left after Close", ns.Name)
	}
	if exec.Command("ip", "link", "show", ns.HostIf).Run() == nil {
		t.Errorf("interface %s left after Close", ns.HostIf)
	}
	if err := ns.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

// TestHostsReachEachOther: a redis-server in one NewHost namespace answers
// redis-cli run in another (routed through the host), not once the
// server's link is down, and again once it is up; a namespace made by New
// is not reachable from a NewHost one (only NewHost namespaces route).
func TestHostsReachEachOther(t *testing.T) {
	if err := netns.Available(); err != nil {
		t.Skip(err)
	}
	var hosts []*netns.NS
	for range 2 {
		h, err := netns.NewHost()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { h.Close() })
		hosts = append(hosts, h)
	}
	plain, err := netns.New()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { plain.Close() })
	for _, srv := range []*netns.NS{hosts[1], plain} {
		cmd := srv.Command("redis-server", "--bind", srv.IP, "--port", "6399", "--save", "", "--appendonly", "no",
			"--protected-mode", "no", "--daemonize", "no", "--loglevel", "warning")
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		t.Cleanup(func() { cmd.Process.Kill(); <-done })
	}
	// ping runs redis-cli PING from hosts[0] against srv.
	ping := func(srv *netns.NS) bool {
		out, _ := hosts[0].Command("timeout", "1", "redis-cli", "-h", srv.IP, "-p", "6399", "PING").Output()
		return strings.TrimSpace(string(out)) == "PONG"
	}
	waitPing := func(srv *netns.NS, what string) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for !ping(srv) {
			if time.Now().After(deadline) {
				t.Fatalf("%s: no PONG from %s", what, srv.IP)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	waitPing(hosts[1], "host to host")
	if err := hosts[1].LinkDown(); err != nil {
		t.Fatal(err)
	}
	if ping(hosts[1]) {
		t.Fatal("PONG with the server's link down")
	}
	if err := hosts[1].LinkUp(); err != nil {
		t.Fatal(err)
	}
	waitPing(hosts[1], "after link up")
	// The plain namespace's server answers the host (TestLinkDownUp) but
	// has no route back to another namespace.
	if ping(plain) {
		t.Fatal("a namespace made by New answered a NewHost namespace")
	}
}
