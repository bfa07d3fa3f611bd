package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/pubmesh/pubmesh/discovery"
	"github.com/pubmesh/pubmesh/internal/embedetcd"
	"github.com/pubmesh/pubmesh/internal/freeport"
)

// The tests run the real binary, built once, against a real etcd and real
// redis-servers.
var (
	binary       string // path of the pubmesh binary under test
	etcdEndpoint string // embedded etcd shared by the tests, one cluster name each
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "pubmesh-cmd-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	// pubmesh, and next to it pubmesh-dev, which pubmesh runs for dev and
	// bench (devtools.go): the tests go through that hand-over too.
	binary = filepath.Join(dir, "pubmesh")
	for _, b := range [][]string{{"-o", binary}, {"-tags", "devtools", "-o", filepath.Join(dir, "pubmesh-dev")}} {
		if out, err := exec.Command("go", append(append([]string{"build"}, b...), ".")...).CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "build %s: %v\n%s", b[len(b)-1], err, out)
			os.RemoveAll(dir)
			os.Exit(1)
		}
	}
	srv, err := embedetcd.Start(embedetcd.Config{})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	etcdEndpoint = srv.Endpoint()
	code := m.Run()
	srv.Close()
	os.RemoveAll(dir)
	if code == 0 {
		// The tests' own goroutines (watchers, output readers) must be gone.
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

var clusterSeq atomic.Int64

// uniqueCluster is a cluster name no other test uses.
func uniqueCluster(t *testing.T) string {
	name := regexp.MustCompile(`[^A-Za-z0-9]+`).ReplaceAllString(t.Name(), "-")
	return fmt.Sprintf("%s-%d-%d", strings.Trim(name, "-"), os.Getpid(), clusterSeq.Add(1))
}

// registry opens the test etcd's registry for cluster.
func registry(t *testing.T, cluster string) *discovery.Registry {
	t.Helper()
	return registryAt(t, etcdEndpoint, cluster)
}

// registryAt opens the registry for cluster on the etcd at endpoint.
func registryAt(t *testing.T, endpoint, cluster string) *discovery.Registry {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cli, err := discovery.Dial(ctx, discovery.EtcdConfig{Endpoints: []string{endpoint}})
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

func freePort(t *testing.T) int {
	t.Helper()
	p, err := freeport.Get()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// freePorts returns the first of n consecutive free ports.
func freePorts(t *testing.T, n int) int {
	t.Helper()
	p, err := freeport.GetN(n)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// result is a finished command.
type result struct {
	code           int
	stdout, stderr string
}

// runPubmesh runs the binary to completion.
func runPubmesh(t *testing.T, timeout time.Duration, args ...string) result {
	t.Helper()
	return runPubmeshEnv(t, timeout, nil, args...)
}

// runPubmeshEnv runs the binary to completion with env as its environment
// (nil: the test's).
func runPubmeshEnv(t *testing.T, timeout time.Duration, env []string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, args...)
	cmd.Env = env
	// On timeout, SIGQUIT first: the Go runtime prints every goroutine's
	// stack to stderr, which the failure below shows (where it hung).
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGQUIT) }
	cmd.WaitDelay = 3 * time.Second
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	if err != nil {
		ee, ok := err.(*exec.ExitError)
		if !ok || ctx.Err() != nil {
			t.Fatalf("pubmesh %s: %v (stderr: %s)", strings.Join(args, " "), err, stderr.String())
		}
		code = ee.ExitCode()
	}
	return result{code: code, stdout: stdout.String(), stderr: stderr.String()}
}

// proc is a pubmesh process running in the background.
type proc struct {
	cmd  *exec.Cmd
	out  *lines // stdout
	errs *lines // stderr
	done chan struct{}
	err  error // Wait's result, set before done closes
}

// lines collects a stream's lines and lets a test wait for one.
type lines struct {
	mu    sync.Mutex
	all   []string
	added chan struct{} // closed and replaced on every line
}

func newLines(r io.Reader) *lines {
	l := &lines{added: make(chan struct{})}
	go func() {
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			l.mu.Lock()
			l.all = append(l.all, sc.Text())
			close(l.added)
			l.added = make(chan struct{})
			l.mu.Unlock()
		}
	}()
	return l
}

func (l *lines) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.all, "\n")
}

// wait returns the first line matching re, waiting at most timeout.
func (l *lines) wait(t *testing.T, re string, timeout time.Duration) string {
	t.Helper()
	rx := regexp.MustCompile(re)
	deadline := time.After(timeout)
	for {
		l.mu.Lock()
		for _, s := range l.all {
			if rx.MatchString(s) {
				l.mu.Unlock()
				return s
			}
		}
		added := l.added
		l.mu.Unlock()
		select {
		case <-added:
		case <-deadline:
			t.Fatalf("no line matching %q after %s; got:\n%s", re, timeout, l.String())
		}
	}
}

// startPubmesh starts the binary in the background. The test's cleanup
// kills it if it is still running.
func startPubmesh(t *testing.T, args ...string) *proc {
	t.Helper()
	return startPubmeshEnv(t, nil, args...)
}

// startPubmeshEnv is startPubmesh with env as the environment (nil: the
// test's).
func startPubmeshEnv(t *testing.T, env []string, args ...string) *proc {
	t.Helper()
	cmd := exec.Command(binary, args...)
	cmd.Env = env
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	p := &proc{cmd: cmd, out: newLines(stdout), errs: newLines(stderr), done: make(chan struct{})}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.err = cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		select {
		case <-p.done:
			return
		default:
		}
		children := redisChildren(cmd.Process.Pid)
		cmd.Process.Signal(syscall.SIGKILL)
		<-p.done
		for _, c := range children { // they die by Pdeathsig; make sure
			waitGone(t, c, 10*time.Second)
		}
	})
	return p
}

// exit waits for the process to end and returns its exit code.
func (p *proc) exit(t *testing.T, timeout time.Duration) int {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(timeout):
		// Its goroutines' stacks (SIGQUIT) say where it hangs.
		p.cmd.Process.Signal(syscall.SIGQUIT)
		select {
		case <-p.done:
		case <-time.After(3 * time.Second):
		}
		t.Fatalf("pubmesh still running after %s; stderr:\n%s", timeout, p.errs.String())
	}
	if p.err == nil {
		return 0
	}
	if ee, ok := p.err.(*exec.ExitError); ok {
		return ee.ExitCode()
	}
	t.Fatal(p.err)
	return -1
}

// redisChildren lists the redis-server processes whose parent is pid.
func redisChildren(pid int) []int {
	var out []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		child, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 || !strings.Contains(s[:i], "(redis-server") {
			continue
		}
		f := strings.Fields(s[i+1:])
		if len(f) > 1 && f[1] == strconv.Itoa(pid) {
			out = append(out, child)
		}
	}
	return out
}

// waitRedisChildren waits until pid has n redis-server children.
func waitRedisChildren(t *testing.T, pid, n int, timeout time.Duration) []int {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		c := redisChildren(pid)
		if len(c) == n {
			return c
		}
		if time.Now().After(deadline) {
			t.Fatalf("pid %d has redis-server children %v, want %d", pid, c, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || !strings.HasPrefix(strings.TrimSpace(s[i+1:]), "Z") // a zombie is dead
}

func waitGone(t *testing.T, pid int, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for alive(pid) {
		if time.Now().After(deadline) {
			t.Errorf("process %d still alive after %s", pid, timeout)
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// listNodes runs `pubmesh nodes --json`.
func listNodes(t *testing.T, cluster string) []discovery.Node {
	t.Helper()
	r := runPubmesh(t, 30*time.Second, "nodes", "--etcd", etcdEndpoint, "--cluster", cluster, "--json")
	if r.code != 0 {
		t.Fatalf("pubmesh nodes: exit %d: %s", r.code, r.stderr)
	}
	var nodes []discovery.Node
	if err := json.Unmarshal([]byte(r.stdout), &nodes); err != nil {
		t.Fatalf("pubmesh nodes --json: %v: %q", err, r.stdout)
	}
	return nodes
}

// watchUntil follows the registry until ok holds, and returns how long it
// took.
func watchUntil(t *testing.T, reg *discovery.Registry, timeout time.Duration, what string, ok func(discovery.Snapshot) bool) time.Duration {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	t0 := time.Now()
	var last discovery.Snapshot
	for s := range reg.Watch(ctx, discovery.WatchOptions{}) {
		last = s
		if !s.Stale && ok(s) {
			return time.Since(t0)
		}
	}
	t.Fatalf("after %s: not %s; last snapshot %+v", timeout, what, last)
	return 0
}

func state(s discovery.Snapshot, id string) discovery.State {
	for _, n := range s.Nodes {
		if n.ID == id {
			return n.State
		}
	}
	return ""
}
