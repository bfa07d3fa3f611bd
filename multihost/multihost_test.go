package multihost

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pubmesh/pubmesh/discovery"
	"github.com/pubmesh/pubmesh/internal/etcdcluster"
	"github.com/pubmesh/pubmesh/internal/netns"
	"github.com/pubmesh/pubmesh/pubmeshtest"
)

const (
	cluster   = "mh"
	nodePort  = "7000" // the same port on every node host: each host is its own machine
	gwPort    = "8443"
	apiKey    = "multihost-api-key"
	within    = 60 * time.Second
	historyOn = `namespaces: [{match: "h*", history_size: 100000, history_ttl: 10m}]`
)

// params are the short and full forms.
type params struct {
	rate      int           // publishes per second
	steady    time.Duration // load before and after each fault
	cut       time.Duration // how long the node host is cut off
	wsPerHost int           // WebSocket connections per client host
}

func paramsFor() params {
	if full() {
		return params{rate: 200, steady: 10 * time.Second, cut: 15 * time.Second, wsPerHost: 50}
	}
	// The cut outlasts the node's lease (5 s), so the node leaves and
	// joins again.
	return params{rate: 50, steady: 2 * time.Second, cut: 7 * time.Second, wsPerHost: 4}
}

// TestMultiHost: see the package documentation.
func TestMultiHost(t *testing.T) {
	if err := netns.Available(); err != nil {
		t.Skipf("multihost skipped: network namespaces unavailable: %v", err)
	}
	t0 := time.Now()
	p := paramsFor()
	pk := newPKI(t)
	hosts := map[string]*host{}
	for _, n := range []string{"etcd1", "etcd2", "etcd3", "node1", "node2", "node3", "gw1", "gw2", "pub", "fsub1", "fsub2", "ws1", "ws2", "ops"} {
		hosts[n] = newHost(t, pk, n)
	}
	pwFile := filepath.Join(pk.dir, "redis-password")
	keyFile := filepath.Join(pk.dir, "api-keys")
	if err := os.WriteFile(pwFile, []byte("multihost-redis-secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, []byte(apiKey+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	// etcd: one member per host, client and peer TLS with client
	// certificates.
	etcdHosts := []*host{hosts["etcd1"], hosts["etcd2"], hosts["etcd3"]}
	ecfg := etcdcluster.Config{Exe: memberBin, Hosts: []string{}, TLS: &etcdcluster.TLS{CA: pk.caFile,
		Client: etcdcluster.Pair{Cert: pk.client.Cert, Key: pk.client.Key}}}
	for _, h := range etcdHosts {
		ecfg.Hosts = append(ecfg.Hosts, h.ip())
		ecfg.TLS.Certs = append(ecfg.TLS.Certs, etcdcluster.Pair{Cert: h.cert.Cert, Key: h.cert.Key})
	}
	ecfg.Command = func(i int, name string, args ...string) *exec.Cmd { return etcdHosts[i].ns.Command(name, args...) }
	etcd, err := etcdcluster.Start(ecfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(etcd.Close)
	eps := strings.Join(etcd.Endpoints(), ",")
	etcdArgs := []string{"--etcd", eps, "--etcd-cacert", pk.caFile, "--etcd-cert", pk.client.Cert, "--etcd-key", pk.client.Key, "--cluster", cluster}

	// The test's own view of etcd (the operator's console): from the root
	// namespace, which reaches every host.
	reg := registry(t, pk, etcd.Endpoints())
	pubmeshtest.ApplyConfig(t, reg, historyOn)

	// Nodes: node1 and node2 bind their host's address and advertise it;
	// node3 binds 0.0.0.0 with no --advertise and must register an
	// address the other hosts can dial.
	nodeArgs := func(id string, h *host) []string {
		a := append([]string{"node"}, etcdArgs...)
		a = append(a, "--id", id, "--port", nodePort, "--data-dir", t.TempDir(),
			"--tls-cert", h.cert.Cert, "--tls-key", h.cert.Key, "--tls-client-ca", pk.caFile,
			"--redis-password-file", pwFile, "--join-timeout", "10s", "--drain-timeout", "10s", "--log-level", "info")
		if id == "n3" {
			return append(a, "--bind", "0.0.0.0")
		}
		return append(a, "--bind", h.ip(), "--advertise", net.JoinHostPort(h.ip(), nodePort))
	}
	nodes := map[string]*proc{}
	nodeHost := map[string]*host{"n1": hosts["node1"], "n2": hosts["node2"], "n3": hosts["node3"]}
	for _, id := range []string{"n1", "n2", "n3"} {
		nodes[id] = start(t, nodeHost[id], "node "+id, nil, nil, pubmeshBin, nodeArgs(id, nodeHost[id])...)
	}
	waitNodes(t, reg, nodes, "n1", "n2", "n3")
	if got, want := nodeAddr(t, reg, "n3"), net.JoinHostPort(hosts["node3"].ip(), nodePort); got != want {
		t.Errorf("node n3 (--bind 0.0.0.0, no --advertise) registered %s, want %s (an address the other hosts can dial)", got, want)
	}

	// Gateways: gw1 listens on its address, gw2 on 0.0.0.0 (its registered
	// URL must still be dialable).
	gwArgs := func(h *host, listen string) []string {
		a := append([]string{"gateway"}, etcdArgs...)
		return append(a, "--listen", listen, "--tls-cert", h.cert.Cert, "--tls-key", h.cert.Key, "--api-key-file", keyFile,
			"--redis-cacert", pk.caFile, "--redis-cert", pk.client.Cert, "--redis-key", pk.client.Key,
			"--redis-password-file", pwFile, "--log-level", "warn")
	}
	gw1Args := gwArgs(hosts["gw1"], net.JoinHostPort(hosts["gw1"].ip(), gwPort))
	gw1 := start(t, hosts["gw1"], "gateway", nil, nil, pubmeshBin, gw1Args...)
	start(t, hosts["gw2"], "gateway", nil, nil, pubmeshBin, gwArgs(hosts["gw2"], "0.0.0.0:"+gwPort)...)
	for _, g := range []*host{hosts["gw1"], hosts["gw2"]} {
		waitHealthy(t, pk, g)
	}
	checkGatewayURLs(t, reg, hosts["gw1"], hosts["gw2"])

	// The publishing service and the subscribers, each on its own host.
	led := newLedger()
	channels := []string{"h0", "h1", "h2", "h3"}
	base := roleConfig{Etcd: etcd.Endpoints(), Cluster: cluster, CA: pk.caFile, Cert: pk.client.Cert, Key: pk.client.Key,
		Password: pwFile, Channels: channels}
	role := func(h *host, label string, rc roleConfig) *proc {
		js, _ := json.Marshal(rc)
		name := label + "@" + h.name
		return start(t, h, label, []string{roleEnv + "=" + string(js)}, func(l string) { led.line(name, l) },
			os.Args[0], "-test.run=^$")
	}
	var subs []string
	var subProcs []*proc
	for i, hn := range []string{"fsub1", "fsub2"} {
		rc := base
		rc.Role, rc.FirstConn = "fanout", i
		subProcs = append(subProcs, role(hosts[hn], "fanout", rc))
		subs = append(subs, fmt.Sprintf("fanout%d", i))
	}
	gwURLs := []string{"wss://" + net.JoinHostPort(hosts["gw1"].ip(), gwPort) + "/ws", "wss://" + net.JoinHostPort(hosts["gw2"].ip(), gwPort) + "/ws"}
	for i, hn := range []string{"ws1", "ws2"} {
		rc := base
		rc.Role, rc.Gateways, rc.APIKey, rc.Conns, rc.FirstConn = "websocket", gwURLs, apiKey, p.wsPerHost, i*p.wsPerHost
		rc.Cert, rc.Key = "", ""
		subProcs = append(subProcs, role(hosts[hn], "websocket", rc))
		for k := range p.wsPerHost {
			subs = append(subs, fmt.Sprintf("ws%d", i*p.wsPerHost+k))
		}
	}
	waitUntil(t, within, "every subscriber ready", func() bool {
		for _, sp := range subProcs {
			if !led.isReady(sp.name) {
				if !sp.running() {
					t.Fatalf("%s exited: %s", sp.name, sp.errs.LastLines(10))
				}
				return false
			}
		}
		return true
	})
	rc := base
	rc.Role, rc.Rate, rc.Replicas = "publisher", p.rate, 2
	pub := role(hosts["pub"], "publisher", rc)
	waitUntil(t, within, "the publisher ready", func() bool { return led.isReady(pub.name) })
	setup := time.Since(t0)
	time.Sleep(p.steady)

	// Fault 1: the gateway host gw1's gateway killed and started again.
	led.setPhase("gateway gw1 kill -9 and restart")
	gw1.kill()
	gw1 = start(t, hosts["gw1"], "gateway", nil, nil, pubmeshBin, gw1Args...)
	waitHealthy(t, pk, hosts["gw1"])
	time.Sleep(p.steady)

	// Fault 2: node host node3 drained with `pubmesh drain` (from the ops
	// host), then its node started again.
	led.setPhase("node n3 drained, then started again")
	drain := start(t, hosts["ops"], "drain", nil, nil, pubmeshBin, append(append([]string{"drain"}, etcdArgs...), "--timeout", "60s", "n3")...)
	if err := drain.wait(within); err != nil {
		t.Fatalf("pubmesh drain n3: %v: %s", err, drain.errs.LastLines(10))
	}
	if err := nodes["n3"].wait(within); err != nil {
		t.Fatalf("node n3 after its drain: %v", err)
	}
	nodes["n3"] = start(t, nodeHost["n3"], "node n3", nil, nil, pubmeshBin, nodeArgs("n3", nodeHost["n3"])...)
	waitNodes(t, reg, nodes, "n1", "n2", "n3")
	time.Sleep(p.steady)

	// Fault 3: node host node1 cut off (link down), then back.
	led.setPhase(fmt.Sprintf("node host node1 cut off for %s", p.cut))
	if err := hosts["node1"].ns.LinkDown(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(p.cut)
	if err := hosts["node1"].ns.LinkUp(); err != nil {
		t.Fatal(err)
	}
	waitNodes(t, reg, nodes, "n1", "n2", "n3")
	led.setPhase("after the faults")
	time.Sleep(p.steady)

	if err := pub.stop(within); err != nil {
		t.Errorf("publisher: %v", err)
	}
	// Wait until every subscriber has every acked message, or nothing
	// changes for 10 s.
	last, since := -1, time.Now()
	for m := led.missing(); m > 0 && time.Since(since) < 10*time.Second; m = led.missing() {
		if m != last {
			last, since = m, time.Now()
		}
		time.Sleep(100 * time.Millisecond)
	}
	for _, sp := range subProcs {
		if err := sp.stop(within); err != nil {
			t.Errorf("%s: %v", sp.name, err)
		}
	}

	counts := led.counts(subs)
	t.Logf("multihost (%s): %d hosts, %d subscribers (2 fanout, %d WebSocket), setup %s, total %s",
		map[bool]string{true: "full", false: "short"}[full()], len(hosts), len(subs), len(subs)-2,
		setup.Round(100*time.Millisecond), time.Since(t0).Round(100*time.Millisecond))
	t.Logf("| phase | published | subscribers | delivered | lost | duplicated | out of order |")
	t.Logf("|---|---|---|---|---|---|---|")
	total := count{phase: "total"}
	for _, c := range counts {
		t.Log(c.String())
		total.published += c.published
		total.delivered += c.delivered
		total.lost += c.lost
		total.dups += c.dups
		total.outOfOrder += c.outOfOrder
		total.recoveredT += c.recoveredT
		total.recoveredF += c.recoveredF
		total.gaps += c.gaps
		total.failedPublishes += c.failedPublishes
	}
	total.subs = len(subs)
	t.Log(total.String())
	t.Logf("WebSocket resumes: %d recovered:true, %d recovered:false; fanout gaps reported: %d; failed publishes: %d",
		total.recoveredT, total.recoveredF, total.gaps, total.failedPublishes)
	if total.published == 0 {
		t.Fatal("nothing was published")
	}
	for _, c := range counts {
		// A loss is allowed only where a subscriber was told
		// (recovered:false, a gap): never a silent one.
		if c.lost > 0 && total.recoveredF == 0 && total.gaps == 0 {
			t.Errorf("%s: %d messages lost silently", c.phase, c.lost)
		}
		if c.dups > 0 {
			t.Errorf("%s: %d duplicates", c.phase, c.dups)
		}
		if c.outOfOrder > 0 {
			t.Errorf("%s: %d messages out of order", c.phase, c.outOfOrder)
		}
	}
	if total.lost > 0 {
		t.Errorf("%d messages lost (%d resumes answered recovered:false, %d gaps reported)", total.lost, total.recoveredF, total.gaps)
	}
}

// registry opens the cluster's registry from the root namespace, with the
// client certificate.
func registry(t *testing.T, pk *pki, eps []string) *discovery.Registry {
	tc := clientTLS(t, pk)
	cert, err := tls.LoadX509KeyPair(pk.client.Cert, pk.client.Key)
	if err != nil {
		t.Fatal(err)
	}
	tc.Certificates = []tls.Certificate{cert}
	cli, err := discovery.Dial(t.Context(), discovery.EtcdConfig{Endpoints: eps, TLS: tc, DialTimeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	reg, err := discovery.New(cli, discovery.Config{Cluster: cluster})
	if err != nil {
		t.Fatal(err)
	}
	return reg
}

func clientTLS(t *testing.T, pk *pki) *tls.Config {
	b, err := os.ReadFile(pk.caFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(b)
	return &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
}

// waitNodes waits until the nodes ids are ready in etcd.
func waitNodes(t *testing.T, reg *discovery.Registry, procs map[string]*proc, ids ...string) {
	t.Helper()
	waitUntil(t, within, fmt.Sprintf("nodes %v ready", ids), func() bool {
		for _, id := range ids {
			if p := procs[id]; p != nil && !p.running() {
				t.Fatalf("node %s exited: %s", id, p.errs.LastLines(10))
			}
		}
		ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
		defer cancel()
		nodes, _, err := reg.List(ctx)
		if err != nil {
			return false
		}
		ready := map[string]bool{}
		for _, n := range nodes {
			ready[n.ID] = n.State == discovery.StateReady
		}
		for _, id := range ids {
			if !ready[id] {
				return false
			}
		}
		return true
	})
}

func nodeAddr(t *testing.T, reg *discovery.Registry, id string) string {
	nodes, _, err := reg.List(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		if n.ID == id {
			return n.Addr
		}
	}
	return ""
}

// waitHealthy waits until the gateway on h answers /healthz with 200 over
// HTTPS, verified against its certificate (its host's address).
func waitHealthy(t *testing.T, pk *pki, h *host) {
	t.Helper()
	cl := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{TLSClientConfig: clientTLS(t, pk)}}
	defer cl.CloseIdleConnections()
	u := "https://" + net.JoinHostPort(h.ip(), gwPort) + "/healthz"
	waitUntil(t, within, "gateway "+h.name+" healthy", func() bool {
		resp, err := cl.Get(u)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
}

// checkGatewayURLs: every gateway registered a URL on its host's address.
func checkGatewayURLs(t *testing.T, reg *discovery.Registry, hs ...*host) {
	t.Helper()
	want := map[string]bool{}
	for _, h := range hs {
		want["https://"+net.JoinHostPort(h.ip(), gwPort)+"/"] = true
	}
	var got []string
	waitUntil(t, within, "both gateways registered", func() bool {
		gws, err := reg.Gateways(t.Context())
		got = got[:0]
		for _, g := range gws {
			got = append(got, g.URL)
		}
		return err == nil && len(gws) == len(hs)
	})
	for _, u := range got {
		if _, err := url.Parse(u); err != nil || !want[u] {
			t.Errorf("gateway registered %s; want one of %v (a URL the other hosts can dial)", u, want)
		}
	}
}

func waitUntil(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", within, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
