package chaos

import (
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/pubmesh/pubmesh/internal/etcdcluster"
	"github.com/pubmesh/pubmesh/internal/tailbuf"
)

// pubmeshBin is the CLI under test and memberBin the etcd member binary
// (internal/etcdcluster/member), both built by TestMain without the race
// detector.
var pubmeshBin, memberBin string

func TestMain(m *testing.M) {
	etcdcluster.Main() // when this process is an etcd member, it ends here
	dir, err := os.MkdirTemp("", "pubmesh-chaos-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	pubmeshBin = filepath.Join(dir, "pubmesh")
	memberBin = filepath.Join(dir, "etcd-member")
	for bin, pkg := range map[string]string{pubmeshBin: "./cmd/pubmesh", memberBin: "./internal/etcdcluster/member"} {
		build := exec.Command("go", "build", "-o", bin, "github.com/pubmesh/pubmesh/"+pkg[2:])
		if out, err := build.CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "build %s: %v\n%s", pkg, err, out)
			os.RemoveAll(dir)
			os.Exit(1)
		}
	}
	flag.Parse()
	if !flagSet("test.parallel") {
		// The scenarios mostly wait for processes (etcd members, agents,
		// redis-servers, the gateway) and timers: run more than GOMAXPROCS
		// of them at once.
		flag.Set("test.parallel", strconv.Itoa(parallelScenarios()))
	}
	code := m.Run()
	if sharedEtcd != nil {
		sharedEtcd.Close()
	}
	os.RemoveAll(dir)
	if code == 0 {
		if err := writeReport(); err != nil {
			fmt.Fprintln(os.Stderr, "chaos: write report:", err)
			code = 1
		}
	}
	if code == 0 {
		// Everything a test started is stopped in its Cleanup; what
		// remains of the test's own goroutines (clients, gateways run in
		// process, agents) would be a leak.
		http.DefaultClient.CloseIdleConnections()
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "chaos: leaked goroutines:", err)
			code = 1
		}
	}
	os.Exit(code)
}

func flagSet(name string) bool {
	set := false
	flag.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}

// parallelScenarios is how many scenarios run at once: the full suite runs
// them one by one, so that the times it measures are not each other's
// load.
func parallelScenarios() int {
	if full() {
		return 1
	}
	return 4
}

// full reports whether the full suite runs (PUBMESH_CHAOS=full, make
// chaos); otherwise every scenario runs in its short version.
func full() bool { return os.Getenv("PUBMESH_CHAOS") == "full" }

// testLog is a logger for in-process clients: warnings and up on stderr
// with PUBMESH_TEST_LOG set, nothing otherwise.
func testLog() *slog.Logger {
	if os.Getenv("PUBMESH_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// proc is a pubmesh process the test started. It is stopped (SIGKILL) in
// t.Cleanup if still running; its stderr is kept and shown when the test
// fails.
type proc struct {
	name string
	cmd  *exec.Cmd
	errs *tailbuf.Buffer
	done chan struct{} // closed once the process has exited and been reaped
	err  error         // Wait's result, set before done closes
}

// startProc runs pubmesh with args.
func startProc(t testing.TB, name string, args ...string) *proc {
	t.Helper()
	cmd := exec.Command(pubmeshBin, args...)
	p := &proc{name: name, cmd: cmd, errs: tailbuf.New(64 << 10), done: make(chan struct{})}
	cmd.Stdout = io.Discard
	cmd.Stderr = p.errs
	// Its own process group: a signal meant for the test does not reach it,
	// and it dies with the test process.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() { p.err = cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		p.kill()
		if t.Failed() {
			t.Logf("%s stderr (last lines):\n%s", name, p.errs.LastLines(30))
		}
	})
	return p
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

func (p *proc) running() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// kill ends the process with SIGKILL and waits for it.
func (p *proc) kill() {
	if p.running() {
		p.cmd.Process.Signal(syscall.SIGKILL)
	}
	<-p.done
}

// stop sends SIGTERM and waits up to within for the exit; then it kills.
// It returns the exit code (-1 if killed).
func (p *proc) stop(within time.Duration) int {
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(within):
		p.kill()
		return -1
	}
	if p.err == nil {
		return 0
	}
	if ee, ok := p.err.(*exec.ExitError); ok {
		return ee.ExitCode()
	}
	return -1
}
