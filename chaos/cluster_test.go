package chaos

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/pubmesh/pubmesh/discovery"
	"github.com/pubmesh/pubmesh/fanout"
	"github.com/pubmesh/pubmesh/internal/etcdcluster"
	"github.com/pubmesh/pubmesh/internal/freeport"
	"github.com/pubmesh/pubmesh/internal/netns"
)

// cluster is one test's pubmesh cluster: its own 3-member etcd cluster,
// node agents (`pubmesh node` processes), and optionally a gateway
// (`pubmesh gateway`).
type cluster struct {
	t    *testing.T
	p    params
	name string // pubmesh cluster name
	etcd *etcdcluster.Cluster
	eps  string // etcd endpoints, comma-separated
	cli  *clientv3.Client
	reg  *discovery.Registry

	mu    sync.Mutex // guards nodes
	nodes []*node
	gw    *gateway
}

var clusterSeq atomic.Int64

// The short version's scenarios that leave etcd alone share one etcd
// cluster (each with its own pubmesh cluster name), to spare the machine;
// the full version gives every scenario its own.
var (
	sharedOnce sync.Once
	sharedEtcd *etcdcluster.Cluster
	sharedErr  error
)

// newCluster starts a pubmesh cluster's etcd: its own 3-member cluster if
// ownEtcd (the scenario kills members) or in full mode, else the shared one.
func newCluster(t *testing.T, p params, ownEtcd bool) *cluster {
	t.Helper()
	var ec *etcdcluster.Cluster
	if ownEtcd || full() {
		var err error
		ec, err = etcdcluster.Start(etcdcluster.Config{Members: 3, Exe: memberBin})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(ec.Close)
	} else {
		sharedOnce.Do(func() { sharedEtcd, sharedErr = etcdcluster.Start(etcdcluster.Config{Members: 3, Exe: memberBin}) })
		if sharedErr != nil {
			t.Fatal(sharedErr)
		}
		ec = sharedEtcd
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cli, err := discovery.Dial(ctx, discovery.EtcdConfig{Endpoints: ec.Endpoints()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	name := regexp.MustCompile(`[^A-Za-z0-9]+`).ReplaceAllString(t.Name(), "-")
	name = fmt.Sprintf("%s-%d", strings.Trim(name, "-"), clusterSeq.Add(1))
	if len(name) > 100 {
		name = name[len(name)-100:]
	}
	reg, err := discovery.New(cli, discovery.Config{Cluster: name, Logger: testLog()})
	if err != nil {
		t.Fatal(err)
	}
	return &cluster{t: t, p: p, name: name, etcd: ec, eps: strings.Join(ec.Endpoints(), ","), cli: cli, reg: reg}
}

// fanoutConfig is the configuration of the test's fanout clients.
func (c *cluster) fanoutConfig(replicas int) fanout.Config {
	return fanout.Config{
		EtcdClient: c.cli, Cluster: c.name, Replicas: replicas, Logger: testLog(),
		// Subscribers in the test must not drop: a drop would count as a
		// loss that is not the cluster's.
		Overflow: fanout.Block, SubscriptionBuffer: 8192,
	}
}

// client makes a fanout client on the test's etcd client, closed at the end
// of the test.
func (c *cluster) client(cfg fanout.Config) *fanout.Client {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	fc, err := fanout.New(ctx, cfg)
	if err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() { fc.Close() })
	return fc
}

// node is one node agent and its Redis.
type node struct {
	c      *cluster
	id     string
	port   int
	addr   string // what clients dial
	attach bool   // the agent watches a Redis the test started (redis)
	redis  *redisProc
	ns     *netns.NS // the Redis runs in this namespace (attach only)

	mu    sync.Mutex // guards agent
	agent *proc
}

// nodeOpts say how a node runs.
type nodeOpts struct {
	// attach: the test starts the redis-server, the agent only watches it
	// (pubmesh node --attach), so killing the agent leaves Redis running.
	attach bool
	// ns, with attach: the redis-server runs in this network namespace.
	ns *netns.NS
}

// addNode starts a node and its agent; it does not wait for it to be ready.
func (c *cluster) addNode(id string, o nodeOpts) *node {
	c.t.Helper()
	n := &node{c: c, id: id, attach: o.attach, ns: o.ns}
	port, err := freeport.Get()
	if err != nil {
		c.t.Fatal(err)
	}
	n.port = port
	n.addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	if o.attach {
		host := "127.0.0.1"
		if o.ns != nil {
			host = o.ns.IP
		}
		n.redis = startRedis(c.t, o.ns, host, port)
		n.addr = n.redis.addr
	}
	n.startAgent()
	c.mu.Lock()
	c.nodes = append(c.nodes, n)
	c.mu.Unlock()
	return n
}

// startAgent starts the node's agent process (again).
func (n *node) startAgent() {
	p := n.c.p
	args := []string{"node", "--etcd", n.c.eps, "--cluster", n.c.name, "--id", n.id,
		"--health-interval", p.healthInterval.String(), "--health-failures", strconv.Itoa(p.healthFailures),
		"--lease-ttl", p.leaseTTL.String(), "--join-timeout", "20s", "--drain-timeout", "20s",
		"--log-level", "info"}
	if n.attach {
		args = append(args, "--attach", n.addr)
	} else {
		args = append(args, "--port", strconv.Itoa(n.port), "--data-dir", n.c.t.TempDir())
	}
	a := startProc(n.c.t, "agent "+n.id, args...)
	n.mu.Lock()
	n.agent = a
	n.mu.Unlock()
}

func (n *node) agentProc() *proc {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.agent
}

// redisPID asks the node's Redis for its process id.
func (n *node) redisPID(ctx context.Context) (int, error) {
	rdb := redis.NewClient(&redis.Options{Addr: n.addr, MaxRetries: -1, DisableIdentity: true})
	defer rdb.Close()
	s, err := rdb.Info(ctx, "server").Result()
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(s, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "process_id:"); ok {
			return strconv.Atoi(v)
		}
	}
	return 0, fmt.Errorf("no process_id in INFO of %s", n.addr)
}

// nodeState is the node's state in etcd ("" when it has no key) and its
// incarnation.
func (c *cluster) nodeState(ctx context.Context, id string) (discovery.State, int64, error) {
	nodes, _, err := c.reg.List(ctx)
	if err != nil {
		return "", 0, err
	}
	for _, n := range nodes {
		if n.ID == id {
			return n.State, n.Incarnation, nil
		}
	}
	return "", 0, nil
}

// waitState waits until node id has state st in etcd ("" for no key) and,
// if notInc is set, an incarnation other than notInc.
func (c *cluster) waitState(id string, st discovery.State, notInc int64, within time.Duration) {
	c.t.Helper()
	deadline := time.Now().Add(within)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		got, inc, err := c.nodeState(ctx, id)
		cancel()
		if err == nil && got == st && (notInc == 0 || inc != notInc) {
			return
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("node %s: state %q (incarnation %d, err %v) after %s, want %q", id, got, inc, err, within, st)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitReady waits until every node of the cluster is ready in etcd and in
// the view of each client given.
func (c *cluster) waitReady(within time.Duration, clients ...*fanout.Client) {
	c.t.Helper()
	c.mu.Lock()
	nodes := append([]*node(nil), c.nodes...)
	c.mu.Unlock()
	for _, n := range nodes {
		c.waitState(n.id, discovery.StateReady, 0, within)
	}
	deadline := time.Now().Add(within)
	for _, fc := range clients {
		for len(fc.Nodes().Ready()) < len(nodes) {
			if time.Now().After(deadline) {
				c.t.Fatalf("client %s sees %d ready nodes, want %d", fc.ID(), len(fc.Nodes().Ready()), len(nodes))
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// redisProc is a redis-server the test runs itself (for attached nodes),
// possibly inside a network namespace.
type redisProc struct {
	addr string
	cmd  *exec.Cmd
	done chan struct{}
}

func startRedis(t *testing.T, ns *netns.NS, host string, port int) *redisProc {
	t.Helper()
	args := []string{"--bind", host, "--port", strconv.Itoa(port), "--save", "", "--appendonly", "no",
		"--protected-mode", "no", "--daemonize", "no", "--loglevel", "warning", "--dir", t.TempDir()}
	var cmd *exec.Cmd
	if ns != nil {
		cmd = ns.Command("redis-server", args...)
	} else {
		cmd = exec.Command("redis-server", args...)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	r := &redisProc{addr: net.JoinHostPort(host, strconv.Itoa(port)), cmd: cmd, done: make(chan struct{})}
	go func() { cmd.Wait(); close(r.done) }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGCONT)
		cmd.Process.Kill()
		<-r.done
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		rdb := redis.NewClient(&redis.Options{Addr: r.addr, MaxRetries: -1, DisableIdentity: true})
		err := rdb.Ping(context.Background()).Err()
		rdb.Close()
		if err == nil {
			return r
		}
		select {
		case <-r.done:
			t.Fatalf("redis-server on %s exited at start", r.addr)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("redis-server on %s does not answer: %v", r.addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// gateway is a `pubmesh gateway` process on a fixed port (kept across
// restarts).
type gateway struct {
	c    *cluster
	addr string // 127.0.0.1:port
	args []string

	mu sync.Mutex // guards p
	p  *proc
}

// startGateway starts an insecure gateway (the suite's WebSocket clients
// carry no token; the bad-input tests check authentication).
func (c *cluster) startGateway(extra ...string) *gateway {
	c.t.Helper()
	port, err := freeport.Get()
	if err != nil {
		c.t.Fatal(err)
	}
	g := &gateway{c: c, addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port))}
	g.args = append([]string{"gateway", "--etcd", c.eps, "--cluster", c.name, "--listen", g.addr,
		"--insecure", "--log-level", "warn"}, extra...)
	g.start()
	c.gw = g
	return g
}

func (g *gateway) start() {
	p := startProc(g.c.t, "gateway", g.args...)
	g.mu.Lock()
	g.p = p
	g.mu.Unlock()
}

func (g *gateway) proc() *proc {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.p
}

func (g *gateway) url() string { return "ws://" + g.addr + "/ws" }

// healthy reports whether /healthz answers 200.
func (g *gateway) healthy() bool {
	cl := http.Client{Timeout: time.Second}
	resp, err := cl.Get("http://" + g.addr + "/healthz")
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// waitHealthy waits until /healthz answers 200 and returns when it did.
func (g *gateway) waitHealthy(within time.Duration) time.Time {
	g.c.t.Helper()
	deadline := time.Now().Add(within)
	for !g.healthy() {
		if !g.proc().running() {
			g.c.t.Fatalf("gateway exited: %s", g.proc().errs.LastLines(10))
		}
		if time.Now().After(deadline) {
			g.c.t.Fatalf("gateway not healthy after %s", within)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return time.Now()
}

// procStatus reads a field of /proc/PID/status, in kB for memory fields.
func procStatus(pid int, field string) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			f := strings.Fields(v)
			if len(f) > 0 {
				n, _ := strconv.ParseInt(f[0], 10, 64)
				return n
			}
		}
	}
	return 0
}
