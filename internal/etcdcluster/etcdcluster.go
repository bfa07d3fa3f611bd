// Package etcdcluster runs a multi-member etcd cluster for fault tests.
// Every member is the real etcd server (go.etcd.io/etcd/server/v3/embed,
// the version in go.mod) with its own name, ports and data directory, in a
// process of its own, and the members form one raft group (InitialCluster
// lists them all). A member can be killed (SIGKILL: it stops at once, like
// a crashed machine, with no leadership transfer and no graceful wait for
// open watches), stopped and restarted on its data, so a test can take
// quorum away and give it back, or restart a single member.
//
// The member processes are, by default, the test binary itself, run again:
// the test's TestMain must call Main first, which runs a member and exits
// when the process was started as one, and returns at once otherwise:
//
//	func TestMain(m *testing.M) {
//		etcdcluster.Main()
//		os.Exit(m.Run())
//	}
//
// Config.Exe may name another binary that calls Main, such as
// ./internal/etcdcluster/member built without the race detector, so that
// the members of a test run under -race stay light.
//
// Config.Hosts, Config.Command and Config.TLS put each member on an address
// of its own, in a network namespace of its own, with client and peer TLS
// (the multi-host test, package multihost).
//
// Members die with the process that started them (Pdeathsig). A Cluster is
// safe for concurrent use.
package etcdcluster

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"

	"github.com/pubmesh/pubmesh/internal/freeport"
	"github.com/pubmesh/pubmesh/internal/tailbuf"
)

// memberEnv carries a member's configuration (JSON) to its process.
const memberEnv = "PUBMESH_ETCDCLUSTER_MEMBER"

// Config of a Cluster. Zero values mean the documented default.
type Config struct {
	// Members is the number of members. Default: 3.
	Members int
	// Dir holds one data directory per member. Default: a new temporary
	// directory, removed by Close.
	Dir string
	// TickMs is the raft heartbeat interval. Default: 100.
	TickMs uint
	// ElectionMs is the raft election timeout. Default: 1000 (ten ticks,
	// so that a loaded test machine does not call elections for nothing).
	ElectionMs uint
	// StartTimeout bounds how long Start and Restart wait for members to
	// serve. Default: 60s.
	StartTimeout time.Duration
	// Exe is the binary run as each member; it must call Main. Default:
	// this process's own executable (os.Executable).
	Exe string
	// Hosts: member i listens for clients and peers on Hosts[i] (an IP
	// address). Default: 127.0.0.1 for every member.
	Hosts []string
	// Command makes the command that runs member i, e.g. inside a network
	// namespace (netns.NS.Command). Default: exec.Command.
	Command func(i int, name string, args ...string) *exec.Cmd
	// TLS, if set: clients and peers speak TLS, and both must present a
	// certificate signed by the CA (etcd's --client-cert-auth and
	// --peer-client-cert-auth). Member i serves Certs[i].
	TLS *TLS
}

// TLS is the certificates of a cluster with TLS. Each member's certificate
// must allow server and client authentication (a member dials its peers
// with it) and name the member's host.
type TLS struct {
	CA    string // trusted by members and clients
	Certs []Pair // one per member
	// Client is what Leader and WaitHealthy present.
	Client Pair
}

// Pair is a certificate file and its key file (PEM).
type Pair struct{ Cert, Key string }

// Cluster is a running set of members.
type Cluster struct {
	cfg     Config
	ownDir  bool
	exe     string
	members []*member

	mu     sync.Mutex // guards closed
	closed bool
}

// memberConfig is what a member process needs; it travels as JSON in
// memberEnv.
type memberConfig struct {
	Name           string `json:"name"`
	Dir            string `json:"dir"`
	ClientURL      string `json:"client_url"`
	PeerURL        string `json:"peer_url"`
	InitialCluster string `json:"initial_cluster"`
	TickMs         uint   `json:"tick_ms"`
	ElectionMs     uint   `json:"election_ms"`
	CA             string `json:"ca,omitempty"` // TLS on, with client certificates
	Cert           string `json:"cert,omitempty"`
	Key            string `json:"key,omitempty"`
}

type member struct {
	idx int
	cfg memberConfig

	mu   sync.Mutex // guards cmd, done
	cmd  *exec.Cmd  // nil while stopped
	done chan struct{}
}

// Start starts every member and waits until each serves clients, which
// needs a leader.
func Start(cfg Config) (*Cluster, error) {
	if cfg.Members == 0 {
		cfg.Members = 3
	}
	if cfg.TickMs == 0 {
		cfg.TickMs = 100
	}
	if cfg.ElectionMs == 0 {
		cfg.ElectionMs = 1000
	}
	if cfg.StartTimeout == 0 {
		cfg.StartTimeout = 60 * time.Second
	}
	exe := cfg.Exe
	if exe == "" {
		var err error
		if exe, err = os.Executable(); err != nil {
			return nil, fmt.Errorf("etcdcluster: %w", err)
		}
	}
	c := &Cluster{cfg: cfg, exe: exe}
	if c.cfg.Dir == "" {
		d, err := os.MkdirTemp("", "pubmesh-etcdcluster-")
		if err != nil {
			return nil, fmt.Errorf("etcdcluster: %w", err)
		}
		c.cfg.Dir, c.ownDir = d, true
	}
	if len(cfg.Hosts) != 0 && len(cfg.Hosts) != cfg.Members {
		return nil, fmt.Errorf("etcdcluster: %d hosts for %d members", len(cfg.Hosts), cfg.Members)
	}
	if cfg.TLS != nil && len(cfg.TLS.Certs) != cfg.Members {
		return nil, fmt.Errorf("etcdcluster: %d certificates for %d members", len(cfg.TLS.Certs), cfg.Members)
	}
	scheme := "http"
	if cfg.TLS != nil {
		scheme = "https"
	}
	var initial []string
	for i := range cfg.Members {
		cp, err1 := freeport.Get()
		pp, err2 := freeport.Get()
		if err := errors.Join(err1, err2); err != nil {
			c.Close()
			return nil, fmt.Errorf("etcdcluster: %w", err)
		}
		host := "127.0.0.1"
		if len(cfg.Hosts) > 0 {
			host = cfg.Hosts[i]
		}
		m := &member{idx: i, cfg: memberConfig{
			Name:       fmt.Sprintf("m%d", i),
			Dir:        filepath.Join(c.cfg.Dir, fmt.Sprintf("m%d", i)),
			ClientURL:  fmt.Sprintf("%s://%s", scheme, net.JoinHostPort(host, strconv.Itoa(cp))),
			PeerURL:    fmt.Sprintf("%s://%s", scheme, net.JoinHostPort(host, strconv.Itoa(pp))),
			TickMs:     cfg.TickMs,
			ElectionMs: cfg.ElectionMs,
		}}
		if t := cfg.TLS; t != nil {
			m.cfg.CA, m.cfg.Cert, m.cfg.Key = t.CA, t.Certs[i].Cert, t.Certs[i].Key
		}
		c.members = append(c.members, m)
		initial = append(initial, m.cfg.Name+"="+m.cfg.PeerURL)
	}
	for _, m := range c.members {
		m.cfg.InitialCluster = strings.Join(initial, ",")
	}
	// A member is ready only once a leader exists, which needs a quorum
	// of members up: start them all at once.
	if err := c.each(c.all(), c.start); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

func (c *Cluster) all() []int {
	out := make([]int, len(c.members))
	for i := range out {
		out[i] = i
	}
	return out
}

// each runs fn for the members at idx concurrently and joins the errors.
func (c *Cluster) each(idx []int, fn func(*member) error) error {
	errs := make([]error, len(idx))
	var wg sync.WaitGroup
	for k, i := range idx {
		if i < 0 || i >= len(c.members) {
			errs[k] = fmt.Errorf("etcdcluster: no member %d", i)
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[k] = fn(c.members[i])
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// start runs the member's process and waits for its "ready" line.
func (c *Cluster) start(m *member) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cmd != nil {
		return nil
	}
	js, _ := json.Marshal(m.cfg)
	command := c.cfg.Command
	if command == nil {
		command = func(_ int, name string, args ...string) *exec.Cmd { return exec.Command(name, args...) }
	}
	cmd := command(m.idx, c.exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), memberEnv+"="+string(js))
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return fmt.Errorf("etcdcluster: %w", err)
	}
	stderr := tailbuf.New(4096)
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("etcdcluster: start %s: %w", m.cfg.Name, err)
	}
	done := make(chan struct{})
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if sc.Text() == "ready" {
				close(ready)
				break
			}
		}
		io.Copy(io.Discard, out)
		cmd.Wait()
		close(done)
	}()
	select {
	case <-ready:
	case <-done:
		return fmt.Errorf("etcdcluster: %s exited at start: %s", m.cfg.Name, strings.TrimSpace(stderr.String()))
	case <-time.After(c.cfg.StartTimeout):
		cmd.Process.Kill()
		<-done
		return fmt.Errorf("etcdcluster: %s not ready after %s", m.cfg.Name, c.cfg.StartTimeout)
	}
	m.cmd, m.done = cmd, done
	return nil
}

// Size is the number of members.
func (c *Cluster) Size() int { return len(c.members) }

// Endpoints are the client URLs of every member, running or not.
func (c *Cluster) Endpoints() []string {
	out := make([]string, len(c.members))
	for i, m := range c.members {
		out[i] = m.cfg.ClientURL
	}
	return out
}

// Endpoint is member i's client URL.
func (c *Cluster) Endpoint(i int) string { return c.members[i].cfg.ClientURL }

// Running reports whether member i's process runs.
func (c *Cluster) Running(i int) bool {
	m := c.members[i]
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cmd == nil {
		return false
	}
	select {
	case <-m.done:
		return false
	default:
		return true
	}
}

// PID is member i's process id, 0 while it is stopped.
func (c *Cluster) PID(i int) int {
	m := c.members[i]
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cmd == nil {
		return 0
	}
	return m.cmd.Process.Pid
}

// Kill ends the members at idx with SIGKILL, at once, keeping their data.
func (c *Cluster) Kill(idx ...int) {
	c.each(idx, func(m *member) error { m.stop(syscall.SIGKILL, 0); return nil })
}

// Stop ends the members at idx gracefully (SIGTERM: a leader hands over
// its leadership first), or with SIGKILL after timeout, keeping their data.
func (c *Cluster) Stop(timeout time.Duration, idx ...int) {
	c.each(idx, func(m *member) error { m.stop(syscall.SIGTERM, timeout); return nil })
}

func (m *member) stop(sig syscall.Signal, timeout time.Duration) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cmd == nil {
		return
	}
	m.cmd.Process.Signal(sig)
	if sig != syscall.SIGKILL {
		select {
		case <-m.done:
		case <-time.After(timeout):
			m.cmd.Process.Kill()
		}
	}
	<-m.done
	m.cmd, m.done = nil, nil
}

// Restart starts the stopped members at idx again, concurrently, on their
// ports and data, and waits until each serves (which needs a quorum).
func (c *Cluster) Restart(idx ...int) error {
	c.mu.Lock()
	closed := c.closed
	c.mu.Unlock()
	if closed {
		return errors.New("etcdcluster: closed")
	}
	return c.each(idx, c.start)
}

// Leader returns the index of the leader as the running members see it,
// or -1 when none knows one.
func (c *Cluster) Leader(ctx context.Context) int {
	ids := map[uint64]int{}
	leader := uint64(0)
	for i, m := range c.members {
		if !c.Running(i) {
			continue
		}
		cli, err := c.client(m.cfg.ClientURL)
		if err != nil {
			continue
		}
		sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		st, err := cli.Status(sctx, m.cfg.ClientURL)
		cancel()
		cli.Close()
		if err != nil {
			continue
		}
		ids[st.Header.MemberId] = i
		if st.Leader != 0 {
			leader = st.Leader
		}
	}
	if i, ok := ids[leader]; ok && leader != 0 {
		return i
	}
	return -1
}

func (c *Cluster) client(ep string) (*clientv3.Client, error) {
	cc := clientv3.Config{Endpoints: []string{ep}, DialTimeout: 2 * time.Second, Logger: zap.NewNop()}
	if t := c.cfg.TLS; t != nil {
		tc, err := transport.TLSInfo{CertFile: t.Client.Cert, KeyFile: t.Client.Key, TrustedCAFile: t.CA}.ClientConfig()
		if err != nil {
			return nil, fmt.Errorf("etcdcluster: client TLS: %w", err)
		}
		cc.TLS = tc
	}
	return clientv3.New(cc)
}

// WaitHealthy waits until a write through every running member succeeds:
// the cluster has a leader and a quorum.
func (c *Cluster) WaitHealthy(ctx context.Context) error {
	n := 0
	for i, m := range c.members {
		if !c.Running(i) {
			continue
		}
		n++
		cli, err := c.client(m.cfg.ClientURL)
		if err != nil {
			return fmt.Errorf("etcdcluster: %w", err)
		}
		for {
			octx, cancel := context.WithTimeout(ctx, 2*time.Second)
			_, err = cli.Put(octx, "/etcdcluster-health", m.cfg.Name)
			cancel()
			if err == nil || ctx.Err() != nil {
				break
			}
			select {
			case <-ctx.Done():
			case <-time.After(100 * time.Millisecond):
			}
		}
		cli.Close()
		if err != nil {
			return fmt.Errorf("etcdcluster: %s not healthy: %w", m.cfg.Name, err)
		}
	}
	if n == 0 {
		return errors.New("etcdcluster: no member running")
	}
	return nil
}

// Close kills every member and removes the data directory if Start made
// it. It is safe to call more than once.
func (c *Cluster) Close() {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.closed = true
	c.mu.Unlock()
	c.Kill(c.all()...)
	if c.ownDir {
		os.RemoveAll(c.cfg.Dir)
	}
}

// Main runs an etcd member and exits if this process was started as one by
// a Cluster; otherwise it returns at once. Call it first in TestMain.
func Main() {
	js := os.Getenv(memberEnv)
	if js == "" {
		return
	}
	if err := runMember(js); err != nil {
		fmt.Fprintln(os.Stderr, "etcdcluster member:", err)
		os.Exit(1)
	}
	os.Exit(0)
}

// runMember serves until SIGTERM or SIGINT, then closes the server.
func runMember(js string) error {
	var mc memberConfig
	if err := json.Unmarshal([]byte(js), &mc); err != nil {
		return err
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	cu, err1 := url.Parse(mc.ClientURL)
	pu, err2 := url.Parse(mc.PeerURL)
	if err := errors.Join(err1, err2); err != nil {
		return err
	}
	ec := embed.NewConfig()
	ec.Name = mc.Name
	ec.Dir = mc.Dir
	ec.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	ec.LogLevel = "error"
	ec.ListenClientUrls, ec.AdvertiseClientUrls = []url.URL{*cu}, []url.URL{*cu}
	ec.ListenPeerUrls, ec.AdvertisePeerUrls = []url.URL{*pu}, []url.URL{*pu}
	ec.InitialCluster = mc.InitialCluster
	ec.InitialClusterToken = "pubmesh-etcdcluster"
	ec.ClusterState = embed.ClusterStateFlagNew // ignored once the member has data
	ec.TickMs = mc.TickMs
	ec.ElectionMs = mc.ElectionMs
	ec.ListenMetricsUrls = nil
	if mc.CA != "" {
		ti := transport.TLSInfo{CertFile: mc.Cert, KeyFile: mc.Key, TrustedCAFile: mc.CA, ClientCertAuth: true}
		ec.ClientTLSInfo, ec.PeerTLSInfo = ti, ti
	}
	e, err := embed.StartEtcd(ec)
	if err != nil {
		return err
	}
	defer e.Close()
	select {
	case <-e.Server.ReadyNotify():
		fmt.Println("ready")
	case err := <-e.Err():
		return err
	case <-sigs:
		return nil
	}
	select {
	case err := <-e.Err():
		return err
	case <-sigs:
		return nil
	}
}
