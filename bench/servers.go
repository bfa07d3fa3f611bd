package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/pubmesh/pubmesh/internal/freeport"
	"github.com/pubmesh/pubmesh/internal/testredis"
)

// servers starts the redis-servers of a run and stops each by its PID. It
// remembers every PID it started, to check at the end that none is left.
// It is safe for concurrent use.
type servers struct {
	bufferLimit string // "HARD SOFT SECONDS"

	mu   sync.Mutex // guards live, pids
	live map[*testredis.Server]bool
	pids []int
}

func newServers(bufferLimit string) *servers {
	return &servers{bufferLimit: bufferLimit, live: map[*testredis.Server]bool{}}
}

// start runs one redis-server on a free loopback port, with the pub/sub
// output buffer limit of pubmesh nodes and extra args.
func (s *servers) start(extra ...string) (*testredis.Server, error) {
	args := append([]string{"--client-output-buffer-limit", "pubsub " + s.bufferLimit}, extra...)
	rs, err := testredis.Start(args...)
	if err != nil {
		return nil, fmt.Errorf("bench: start redis-server: %w", err)
	}
	s.mu.Lock()
	s.live[rs] = true
	s.pids = append(s.pids, rs.PID())
	s.mu.Unlock()
	return rs, nil
}

// stop kills rs (SIGKILL by PID, then waits for it) and removes its dir.
func (s *servers) stop(rs *testredis.Server) {
	s.mu.Lock()
	delete(s.live, rs)
	s.mu.Unlock()
	rs.Close()
}

// stopAll stops every server still running.
func (s *servers) stopAll() {
	s.mu.Lock()
	all := make([]*testredis.Server, 0, len(s.live))
	for rs := range s.live {
		all = append(all, rs)
	}
	s.mu.Unlock()
	for _, rs := range all {
		s.stop(rs)
	}
}

// started is how many redis-servers were started.
func (s *servers) started() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.pids)
}

// leftover lists the started PIDs that are still alive (signal 0 finds
// them); empty after stopAll.
func (s *servers) leftover() []int {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []int
	for _, pid := range s.pids {
		if err := syscall.Kill(pid, 0); err == nil || errors.Is(err, syscall.EPERM) {
			out = append(out, pid)
		}
	}
	return out
}

// startCluster starts n cluster-enabled redis-servers, joins them with
// `redis-cli --cluster create … --cluster-yes` into n masters and waits
// until every node reports cluster_state:ok.
func (s *servers) startCluster(ctx context.Context, n int) ([]*testredis.Server, error) {
	if _, err := exec.LookPath("redis-cli"); err != nil {
		return nil, errors.New("bench: redis-cli not on PATH (it comes with redis-tools)")
	}
	var nodes []*testredis.Server
	fail := func(err error) ([]*testredis.Server, error) {
		for _, rs := range nodes {
			s.stop(rs)
		}
		return nil, err
	}
	for range n {
		bus, err := freeport.Get()
		if err != nil {
			return fail(err)
		}
		rs, err := s.start("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
			"--cluster-port", strconv.Itoa(bus), "--cluster-node-timeout", "5000")
		if err != nil {
			return fail(err)
		}
		nodes = append(nodes, rs)
	}
	args := []string{"--cluster", "create"}
	for _, rs := range nodes {
		args = append(args, rs.Addr)
	}
	args = append(args, "--cluster-replicas", "0", "--cluster-yes")
	cctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	out, err := exec.CommandContext(cctx, "redis-cli", args...).CombinedOutput()
	if err != nil {
		return fail(fmt.Errorf("bench: redis-cli --cluster create: %w: %s", err, lastLines(string(out), 3)))
	}
	for _, rs := range nodes {
		if err := waitClusterOK(cctx, rs.Addr, n); err != nil {
			return fail(err)
		}
	}
	return nodes, nil
}

// waitClusterOK waits until the node at addr says cluster_state:ok and
// knows n nodes.
func waitClusterOK(ctx context.Context, addr string, n int) error {
	rdb := redis.NewClient(&redis.Options{Addr: addr, DisableIdentity: true})
	defer rdb.Close()
	var last string
	for {
		info, err := rdb.ClusterInfo(ctx).Result()
		if err == nil {
			last = info
			if strings.Contains(info, "cluster_state:ok") && strings.Contains(info, fmt.Sprintf("cluster_known_nodes:%d\r", n)) {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("bench: cluster node %s not ok: %s", addr, lastLines(last, 2))
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// ansi matches terminal colour codes, which redis-cli prints.
var ansi = regexp.MustCompile(`\x1b\[[0-9;]*m`)

// lastLines returns the last n lines of s, joined, without colour codes.
func lastLines(s string, n int) string {
	s = ansi.ReplaceAllString(s, "")
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " / ")
}

// redisCPU sums used_cpu_sys and used_cpu_user of INFO cpu over addrs.
func redisCPU(ctx context.Context, addrs []string) (time.Duration, error) {
	var total time.Duration
	for _, a := range addrs {
		rdb := redis.NewClient(&redis.Options{Addr: a, DisableIdentity: true})
		info, err := rdb.Info(ctx, "cpu").Result()
		rdb.Close()
		if err != nil {
			return 0, fmt.Errorf("bench: INFO cpu on %s: %w", a, err)
		}
		d, err := parseCPU(info)
		if err != nil {
			return 0, fmt.Errorf("bench: INFO cpu on %s: %w", a, err)
		}
		total += d
	}
	return total, nil
}

// parseCPU reads used_cpu_sys + used_cpu_user (seconds) from INFO cpu.
func parseCPU(info string) (time.Duration, error) {
	var sum float64
	found := 0
	sc := bufio.NewScanner(strings.NewReader(info))
	for sc.Scan() {
		k, v, ok := strings.Cut(strings.TrimSpace(sc.Text()), ":")
		if !ok || (k != "used_cpu_sys" && k != "used_cpu_user") {
			continue
		}
		f, err := strconv.ParseFloat(v, 64)
		if err != nil {
			return 0, fmt.Errorf("%s: %w", k, err)
		}
		sum += f
		found++
	}
	if found != 2 {
		return 0, errors.New("no used_cpu_sys/used_cpu_user")
	}
	return time.Duration(sum * float64(time.Second)), nil
}

// processCPU is the user+system CPU time of this process so far.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
