package bench

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/pubmesh/pubmesh/internal/freeport"
	"github.com/pubmesh/pubmesh/internal/tailbuf"
)

// gatewayProc is a `pubmesh gateway` child process of a fan-out row.
type gatewayProc struct {
	cmd    *exec.Cmd
	url    string // http://127.0.0.1:PORT
	stderr *tailbuf.Buffer
	done   chan struct{} // closed when the process has exited
}

// startGatewayProcess runs binary's gateway on a free loopback port,
// insecure (loopback, no tokens), without subscription or publish limits,
// against cluster in the etcd at endpoint, and waits until its /healthz
// says it has a working node.
func startGatewayProcess(ctx context.Context, binary, endpoint, cluster string) (*gatewayProc, error) {
	if binary == "" {
		return nil, fmt.Errorf("bench: no pubmesh binary to run the gateway (Config.GatewayBinary)")
	}
	port, err := freeport.Get()
	if err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	addr := "127.0.0.1:" + strconv.Itoa(port)
	g := &gatewayProc{url: "http://" + addr, stderr: tailbuf.New(64 << 10), done: make(chan struct{})}
	g.cmd = exec.Command(binary, "gateway", "--etcd", endpoint, "--cluster", cluster, "--listen", addr,
		"--insecure", "--max-subscriptions", "-1", "--send-queue", strconv.Itoa(fanoutSendQueue), "--log-level", "warn")
	g.cmd.Stdout, g.cmd.Stderr = g.stderr, g.stderr
	// Its own environment without PUBMESH_ variables: the flags above say
	// everything, for this build and an old one alike.
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PUBMESH_") {
			g.cmd.Env = append(g.cmd.Env, kv)
		}
	}
	if err := g.cmd.Start(); err != nil {
		return nil, fmt.Errorf("bench: start %s gateway: %w", binary, err)
	}
	go func() { g.cmd.Wait(); close(g.done) }()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if g.healthy(ctx) {
			return g, nil
		}
		if g.exited() || time.Now().After(deadline) || ctx.Err() != nil {
			g.stop()
			return nil, fmt.Errorf("bench: %s gateway did not become healthy: %s", binary, g.stderrTail())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (g *gatewayProc) healthy(ctx context.Context) bool {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, g.url+"/healthz", nil)
	if err != nil {
		return false
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

func (g *gatewayProc) wsURL() string { return "ws" + strings.TrimPrefix(g.url, "http") + "/ws" }

func (g *gatewayProc) exited() bool {
	select {
	case <-g.done:
		return true
	default:
		return false
	}
}

func (g *gatewayProc) rss() (int64, error) { return vmRSS(g.cmd.Process.Pid) }

// cpu is the process's user and system CPU time so far, from
// /proc/PID/stat (fields 14 and 15, in clock ticks of 1/100 s: Linux's
// USER_HZ).
func (g *gatewayProc) cpu() (time.Duration, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(g.cmd.Process.Pid) + "/stat")
	if err != nil {
		return 0, fmt.Errorf("bench: %w", err)
	}
	// The command name (field 2) is in parentheses and may hold spaces:
	// count fields after its closing one.
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 13 {
		return 0, fmt.Errorf("bench: short /proc/PID/stat: %q", s)
	}
	var ticks int64
	for _, x := range f[11:13] { // utime, stime: fields 14 and 15
		v, err := strconv.ParseInt(x, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("bench: /proc/PID/stat: %w", err)
		}
		ticks += v
	}
	return time.Duration(ticks) * 10 * time.Millisecond, nil
}

// metrics scrapes the gateway's /metrics: the values of the series
// without labels, by name. Empty if it cannot be read.
func (g *gatewayProc) metrics() map[string]float64 {
	m := map[string]float64{}
	resp, err := http.Get(g.url + "/metrics")
	if err != nil {
		return m
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		name, value, ok := strings.Cut(sc.Text(), " ")
		if !ok || strings.HasPrefix(name, "#") || strings.Contains(name, "{") {
			continue
		}
		if v, err := strconv.ParseFloat(value, 64); err == nil {
			m[name] = v
		}
	}
	return m
}

// stop ends the gateway: SIGTERM, then SIGKILL after 10 s.
func (g *gatewayProc) stop() {
	if g.exited() {
		return
	}
	g.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-g.done:
	case <-time.After(10 * time.Second):
		g.cmd.Process.Kill()
		<-g.done
	}
}

func (g *gatewayProc) stderrTail() string { return lastLines(g.stderr.String(), 5) }
