package multihost

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/pubmesh/pubmesh/internal/devcerts"
	"github.com/pubmesh/pubmesh/internal/etcdcluster"
	"github.com/pubmesh/pubmesh/internal/netns"
	"github.com/pubmesh/pubmesh/internal/tailbuf"
)

// pubmeshBin and memberBin are built by TestMain without the race
// detector: the CLI under test and the etcd member.
var pubmeshBin, memberBin string

func TestMain(m *testing.M) {
	runRole()          // a publisher or subscriber process ends here
	etcdcluster.Main() // so does an etcd member
	dir, err := os.MkdirTemp("", "pubmesh-multihost-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	pubmeshBin, memberBin = filepath.Join(dir, "pubmesh"), filepath.Join(dir, "etcd-member")
	for bin, pkg := range map[string]string{pubmeshBin: "cmd/pubmesh", memberBin: "internal/etcdcluster/member"} {
		if out, err := exec.Command("go", "build", "-o", bin, "github.com/pubmesh/pubmesh/"+pkg).CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "build %s: %v\n%s", pkg, err, out)
			os.RemoveAll(dir)
			os.Exit(1)
		}
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// full reports whether the full form runs (PUBMESH_MULTIHOST=full).
func full() bool { return os.Getenv("PUBMESH_MULTIHOST") == "full" }

// host is one machine: a network namespace with its own address and a
// certificate for that address.
type host struct {
	name string
	ns   *netns.NS
	cert devcerts.Pair
}

func (h *host) ip() string { return h.ns.IP }

// pki is the cluster's certificates: one CA, one server certificate per
// host (its address as the only SAN), one client certificate.
type pki struct {
	dir    string
	ca     *devcerts.CA
	caFile string
	client devcerts.Pair
}

func newPKI(t *testing.T) *pki {
	dir := t.TempDir()
	now := time.Now().Add(-time.Minute)
	ca, err := devcerts.NewCA("multihost CA", now, now.Add(24*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	p := &pki{dir: dir, ca: ca, caFile: filepath.Join(dir, "ca.crt")}
	if err := os.WriteFile(p.caFile, ca.CertPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	p.client = p.issue(t, "pubmesh-client", devcerts.Client, nil)
	return p
}

func (p *pki) issue(t *testing.T, name string, u devcerts.Usage, hosts []string) devcerts.Pair {
	now := time.Now().Add(-time.Minute)
	c, k, err := p.ca.Issue(name, u, hosts, now, now.Add(24*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	pair := devcerts.Pair{Cert: filepath.Join(p.dir, name+".crt"), Key: filepath.Join(p.dir, name+".key")}
	if err := devcerts.WritePair(pair, c, k); err != nil {
		t.Fatal(err)
	}
	return pair
}

// newHost makes a host, deleted (with whatever still runs in it) when the
// test ends.
func newHost(t *testing.T, p *pki, name string) *host {
	ns, err := netns.NewHost()
	if err != nil {
		t.Fatalf("host %s: %v", name, err)
	}
	t.Cleanup(func() {
		if err := ns.Close(); err != nil {
			t.Errorf("host %s: %v", name, err)
		}
	})
	return &host{name: name, ns: ns, cert: p.issue(t, name, devcerts.Server, []string{ns.IP})}
}

// proc is a process the test runs inside a host. It is killed, by PID, in
// t.Cleanup if still running; its stderr's tail is shown when the test
// fails.
type proc struct {
	name  string
	cmd   *exec.Cmd
	stdin io.WriteCloser
	errs  *tailbuf.Buffer
	done  chan struct{}
	err   error // Wait's result, set before done closes
}

// start runs name with args in h. lines, if set, gets every stdout line.
func start(t *testing.T, h *host, label string, env []string, lines func(string), name string, args ...string) *proc {
	t.Helper()
	cmd := h.ns.Command(name, args...)
	cmd.Env = append(os.Environ(), env...)
	p := &proc{name: label + "@" + h.name, cmd: cmd, errs: tailbuf.New(32 << 10), done: make(chan struct{})}
	cmd.Stderr = p.errs
	// Its own process group, and it dies with the test process.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	var stdout io.ReadCloser
	var err error
	if lines != nil {
		if stdout, err = cmd.StdoutPipe(); err != nil {
			t.Fatal(err)
		}
		if p.stdin, err = cmd.StdinPipe(); err != nil {
			t.Fatal(err)
		}
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", p.name, err)
	}
	go func() {
		if stdout != nil {
			sc := bufio.NewScanner(stdout)
			for sc.Scan() {
				lines(sc.Text())
			}
			io.Copy(io.Discard, stdout)
		}
		p.err = cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.kill()
		if t.Failed() {
			t.Logf("%s stderr (last lines):\n%s", p.name, p.errs.LastLines(15))
		}
	})
	return p
}

func (p *proc) running() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// kill ends the process with SIGKILL, by its PID, and waits for it.
func (p *proc) kill() {
	if p.running() {
		syscall.Kill(p.cmd.Process.Pid, syscall.SIGKILL)
	}
	<-p.done
}

// stop closes stdin (a role's signal to finish) or sends SIGTERM, and
// waits up to within before killing.
func (p *proc) stop(within time.Duration) error {
	if p.stdin != nil {
		p.stdin.Close()
	} else {
		syscall.Kill(p.cmd.Process.Pid, syscall.SIGTERM)
	}
	select {
	case <-p.done:
		return p.err
	case <-time.After(within):
		p.kill()
		return fmt.Errorf("%s did not stop within %s", p.name, within)
	}
}

// wait waits up to within for the process to exit by itself.
func (p *proc) wait(within time.Duration) error {
	select {
	case <-p.done:
		return p.err
	case <-time.After(within):
		return fmt.Errorf("%s still running after %s", p.name, within)
	}
}
