// Package testredis starts real redis-server processes for tests and
// examples, on free loopback ports, with no persistence. Every server it
// starts is stopped by Close (and, with New, by t.Cleanup), and dies with the
// test process (Pdeathsig) if that is killed.
package testredis

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pubmesh/pubmesh/internal/freeport"
)

// Server is one running redis-server.
type Server struct {
	Addr string // 127.0.0.1:port
	Port int

	mu   sync.Mutex // guards cmd
	cmd  *exec.Cmd
	dir  string
	args []string
	done chan struct{} // closed when cmd has been waited for
}

// New starts a redis-server and stops it when the test ends.
func New(t testing.TB, extraArgs ...string) *Server {
	t.Helper()
	s, err := Start(extraArgs...)
	if err != nil {
		t.Fatalf("testredis: %v", err)
	}
	t.Cleanup(s.Close)
	return s
}

// Start starts a redis-server on a free port and waits until it answers.
func Start(extraArgs ...string) (*Server, error) {
	if _, err := exec.LookPath("redis-server"); err != nil {
		return nil, errors.New("redis-server not on PATH (make test installs it)")
	}
	dir, err := os.MkdirTemp("", "pubmesh-redis-")
	if err != nil {
		return nil, err
	}
	var lastErr error
	for range 5 {
		port, err := freeport.Get()
		if err != nil {
			return nil, err
		}
		s := &Server{Addr: fmt.Sprintf("127.0.0.1:%d", port), Port: port, dir: dir, args: extraArgs}
		if lastErr = s.start(); lastErr == nil {
			return s, nil
		}
	}
	os.RemoveAll(dir)
	return nil, lastErr
}

func (s *Server) start() error {
	args := append([]string{
		"--port", strconv.Itoa(s.Port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", s.dir,
		"--daemonize", "no", "--loglevel", "warning",
	}, s.args...)
	cmd := exec.Command("redis-server", args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start redis-server: %w", err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	s.mu.Lock()
	s.cmd, s.done = cmd, done
	s.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for {
		if Ping(ctx, s.Addr) == nil {
			return nil
		}
		select {
		case <-done:
			return fmt.Errorf("redis-server on port %d exited at start", s.Port)
		case <-ctx.Done():
			s.Kill()
			return fmt.Errorf("redis-server on port %d did not answer PING", s.Port)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// PID is the process id of the running server (0 after Kill).
func (s *Server) PID() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil || s.cmd.Process == nil {
		return 0
	}
	return s.cmd.Process.Pid
}

// Signal sends sig to the server (SIGSTOP and SIGCONT simulate a hang).
func (s *Server) Signal(sig syscall.Signal) error {
	pid := s.PID()
	if pid == 0 {
		return errors.New("testredis: not running")
	}
	return syscall.Kill(pid, sig)
}

// Kill ends the server with SIGKILL and waits for it.
func (s *Server) Kill() {
	s.mu.Lock()
	cmd, done := s.cmd, s.done
	s.cmd = nil
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	cmd.Process.Signal(syscall.SIGCONT)
	cmd.Process.Kill()
	<-done
}

// Restart starts the server again on the same port after Kill.
func (s *Server) Restart() error {
	s.Kill()
	return s.start()
}

// Close kills the server and removes its directory. Safe to call twice.
func (s *Server) Close() {
	s.Kill()
	os.RemoveAll(s.dir)
}

// Ping sends a RESP PING to addr and waits for +PONG. It needs no client
// library, so helpers and probes can use it before anything else is set up.
func Ping(ctx context.Context, addr string) error {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	} else {
		c.SetDeadline(time.Now().Add(time.Second))
	}
	if _, err := c.Write([]byte("PING\r\n")); err != nil {
		return err
	}
	buf := make([]byte, 7)
	n, err := c.Read(buf)
	if err != nil {
		return err
	}
	if string(buf[:n]) != "+PONG\r\n" {
		return fmt.Errorf("unexpected PING reply %q", buf[:n])
	}
	return nil
}
