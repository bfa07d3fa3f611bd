package broker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// process is one redis-server child. Only the agent's run goroutine starts
// and stops it; a waiter goroutine reaps it and closes done.
type process struct {
	pid     int
	started time.Time
	out     *tail         // the child's last output lines
	done    chan struct{} // closed by the waiter once the child has exited and been reaped
	waitErr error         // the exit status; written before done closes
}

// confName is the file the child reads its configuration from.
const confName = "redis.conf"

// writeConf writes the child's redis.conf into dir (mode 0600) and returns
// its path. The file is rewritten at every start, so edits to it are lost.
// rs are the limits of the cluster configuration in force (with cfg's
// overrides), so a restarted child starts with them; agentPass, if set, is
// the password of the agent's own ACL user (see agentUser).
func writeConf(dir string, cfg Config, rs redisSettings, agentPass string) (string, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("broker: data dir: %w", err)
	}
	protected := "yes"
	if !isLoopback(cfg.Bind) {
		// Protected mode would refuse every non-local client of a node that
		// is meant to serve them; the operator chose a non-loopback bind.
		protected = "no"
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "# Written by the pubmesh node agent for node %s; rewritten at every start.\n", cfg.ID)
	if err := writeSecurityConf(&b, cfg, agentPass); err != nil {
		return "", err
	}
	fmt.Fprintf(&b, "bind %s\n", cfg.Bind)
	fmt.Fprintf(&b, "protected-mode %s\n", protected)
	b.WriteString("daemonize no\n")
	fmt.Fprintf(&b, "dir %s\n", quoteConf(dir))
	b.WriteString("logfile \"\"\n")
	b.WriteString("loglevel notice\n")
	b.WriteString("# A pub/sub node keeps no data: no RDB snapshots, no AOF.\n")
	b.WriteString("save \"\"\n")
	b.WriteString("appendonly no\n")
	b.WriteString("# Subscribers that fall this far behind (client-output-buffer-limit) are disconnected (and resubscribe).\n")
	b.WriteString("# From the cluster configuration (node.*) or the agent's flags; the agent changes them live with CONFIG SET.\n")
	fmt.Fprintf(&b, "client-output-buffer-limit pubsub %s\n", rs.limit)
	fmt.Fprintf(&b, "maxmemory %d\n", rs.maxMemory)
	b.WriteString("# When full, evict the history streams closest to their expiry first; pub/sub itself uses no keys.\n")
	fmt.Fprintf(&b, "maxmemory-policy %s\n", rs.policy)
	path := filepath.Join(dir, confName)
	if err := os.WriteFile(path, b.Bytes(), 0o600); err != nil {
		return "", fmt.Errorf("broker: write %s: %w", path, err)
	}
	// WriteFile keeps the mode of an existing file; make sure it is 0600.
	if err := os.Chmod(path, 0o600); err != nil {
		return "", fmt.Errorf("broker: chmod %s: %w", path, err)
	}
	return path, nil
}

func quoteConf(s string) string { return strconv.Quote(s) }

// startProcess starts redis-server with conf and waits until it answers
// PING and its INFO shows the child's own pid (so a server that was already
// on the port is never mistaken for ours). A child that exits first is a
// clear error with the last line it printed.
func startProcess(ctx context.Context, cfg Config, conf string, pr *probe, log *slog.Logger) (*process, info, error) {
	if err := checkPortFree(cfg.Bind, cfg.Port); err != nil {
		return nil, info{}, err
	}
	cmd := exec.Command(cfg.RedisServer, conf)
	cmd.Env = childEnv() // no PUBMESH_*PASSWORD* in the child's environment
	p := &process{out: newTail(20, log), done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.out, p.out
	cmd.SysProcAttr = &syscall.SysProcAttr{
		// The child dies with the agent even if the agent is SIGKILLed.
		Pdeathsig: syscall.SIGKILL,
		// Its own process group: a terminal's Ctrl-C reaches the agent only,
		// which then drains before it stops the child.
		Setpgid: true,
	}
	started := make(chan error, 1)
	go func() {
		// Pdeathsig fires when the thread that forked the child exits, not
		// the process (golang/go#27505). Keep this goroutine on its thread
		// until the child is gone, so the signal means "the agent died".
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		p.pid, p.started = cmd.Process.Pid, time.Now()
		started <- nil
		p.waitErr = cmd.Wait()
		close(p.done)
	}()
	if err := <-started; err != nil {
		return nil, info{}, fmt.Errorf("broker: start %s: %w", cfg.RedisServer, err)
	}
	sctx, cancel := context.WithTimeout(ctx, cfg.StartTimeout)
	defer cancel()
	var lastErr error
	for {
		if lastErr = pr.ping(sctx); lastErr == nil {
			in, err := pr.serverInfo(sctx)
			if err == nil && in.pid == p.pid {
				return p, in, nil
			}
		}
		select {
		case <-p.done:
			return nil, info{}, fmt.Errorf("broker: redis-server exited at start (%s)", p.exitReason())
		case <-sctx.Done():
			p.stop(cfg.StopTimeout)
			if ctx.Err() != nil {
				return nil, info{}, ctx.Err()
			}
			return nil, info{}, fmt.Errorf("broker: redis-server on %s:%d did not answer PING within %s (last error: %v)", cfg.Bind, cfg.Port, cfg.StartTimeout, lastErr)
		case <-time.After(2 * time.Millisecond): // a join waits for this
		}
	}
}

// stop ends the child: SIGTERM to its process group, SIGKILL after timeout
// if it is still there, and waits until it is reaped.
func (p *process) stop(timeout time.Duration) {
	select {
	case <-p.done:
		return
	default:
	}
	syscall.Kill(-p.pid, syscall.SIGTERM)
	syscall.Kill(-p.pid, syscall.SIGCONT) // a stopped process must run to handle TERM
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-p.done:
	case <-t.C:
		syscall.Kill(-p.pid, syscall.SIGKILL)
		<-p.done
	}
}

// exitStatus is how the child ended: "exit status 1", "signal: killed".
func (p *process) exitStatus() string {
	var ee *exec.ExitError
	switch {
	case errors.As(p.waitErr, &ee):
		return ee.ProcessState.String()
	case p.waitErr != nil:
		return p.waitErr.Error()
	}
	return "exit status 0"
}

// exitReason is the exit status and the last line the child printed.
func (p *process) exitReason() string {
	if last := p.out.last(); last != "" {
		return p.exitStatus() + ": " + last
	}
	return p.exitStatus()
}

// tail is an io.Writer that keeps the last lines the child printed and logs
// each at debug level. It is safe for concurrent use.
type tail struct {
	log *slog.Logger

	mu      sync.Mutex // guards partial, lines
	partial []byte
	lines   []string
	max     int
}

func newTail(max int, log *slog.Logger) *tail { return &tail{max: max, log: log} }

func (t *tail) Write(b []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.partial = append(t.partial, b...)
	for {
		i := bytes.IndexByte(t.partial, '\n')
		if i < 0 {
			break
		}
		line := strings.TrimSpace(string(t.partial[:i]))
		t.partial = t.partial[i+1:]
		if line == "" {
			continue
		}
		t.log.Debug("redis-server", "line", line)
		t.lines = append(t.lines, line)
		if len(t.lines) > t.max {
			t.lines = t.lines[1:]
		}
	}
	if len(t.partial) > 64<<10 { // a line that never ends
		t.partial = t.partial[:0]
	}
	return len(b), nil
}

// last returns the child's last line without redis's "pid:role date mark"
// prefix: when redis-server gives up at start, its last words say why
// ("Failed listening on port 7001 (tcp), aborting.", "Bad directive or wrong
// number of arguments").
func (t *tail) last() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.lines) == 0 {
		return ""
	}
	l := t.lines[len(t.lines)-1]
	for _, mark := range []string{" # ", " * ", " - ", " . "} {
		if i := strings.Index(l, mark); i >= 0 {
			return l[i+len(mark):]
		}
	}
	return l
}
