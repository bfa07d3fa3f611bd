package chaos

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// row is one scenario's line in the reliability table.
type row struct {
	num        int
	name       string
	replicas   int
	published  int
	failed     int
	slowest    time.Duration
	fanoutSubs int
	wsSubs     int
	subs       []subResult // fanout subscribers first, then WebSocket ones
	detect     time.Duration
	recover    time.Duration // -1: not applicable
	note       string
	history    *historyResult // the recovery from the fault's moment; nil: not checked
}

// report collects the rows and the load results of this run.
var report struct {
	mu    sync.Mutex
	rows  []row
	loads []string // lines about the load-held tests
}

func record(r row) {
	report.mu.Lock()
	defer report.mu.Unlock()
	report.rows = append(report.rows, r)
}

func recordLoad(format string, args ...any) {
	report.mu.Lock()
	defer report.mu.Unlock()
	report.loads = append(report.loads, fmt.Sprintf(format, args...))
}

func (r row) summary() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d %s (replicas %d): published %d (failed %d, slowest publish %s), detect %s, recover %s",
		r.num, r.name, r.replicas, r.published, r.failed, r.slowest.Round(time.Millisecond), dur(r.detect), dur(r.recover))
	for _, s := range r.subs {
		fmt.Fprintf(&b, "\n  %-8s received %d of %d expected, lost %d (allowed %d), dups %d, out of order %d, max latency %s",
			s.name, s.received, s.expected, s.lost, s.bound, s.dups, s.outOfOrder, s.maxLatency.Round(time.Millisecond))
	}
	return b.String()
}

func dur(d time.Duration) string {
	switch {
	case d < 0:
		return "—"
	case d < 10*time.Second:
		return fmt.Sprintf("%.2f s", d.Seconds())
	default:
		return fmt.Sprintf("%.1f s", d.Seconds())
	}
}

// receivedCell renders "received/expected" for a group of subscribers.
func receivedCell(subs []subResult) string {
	if len(subs) == 0 {
		return "—"
	}
	same := true
	for _, s := range subs {
		same = same && s.received == subs[0].received && s.expected == subs[0].expected
	}
	if same {
		return fmt.Sprintf("%d/%d ×%d", subs[0].received, subs[0].expected, len(subs))
	}
	if len(subs) <= 3 {
		var parts []string
		for _, s := range subs {
			parts = append(parts, fmt.Sprintf("%d/%d", s.received, s.expected))
		}
		return strings.Join(parts, ", ")
	}
	lo, hi := subs[0], subs[0]
	elo, ehi := subs[0].expected, subs[0].expected
	for _, s := range subs {
		if s.received < lo.received {
			lo = s
		}
		if s.received > hi.received {
			hi = s
		}
		elo, ehi = min(elo, s.expected), max(ehi, s.expected)
	}
	exp := fmt.Sprint(elo)
	if elo != ehi {
		exp = fmt.Sprintf("%d–%d", elo, ehi)
	}
	return fmt.Sprintf("%d–%d / %s ×%d", lo.received, hi.received, exp, len(subs))
}

func lostCell(subs []subResult) string {
	total, most, bound := 0, 0, -1
	for _, s := range subs {
		total += s.lost
		most = max(most, s.lost)
		if s.bound > 0 && (bound < 0 || s.bound < bound) {
			bound = s.bound
		}
	}
	cell := "0"
	if total > 0 {
		cell = fmt.Sprintf("%d (max %d per subscriber)", total, most)
	}
	if bound >= 0 {
		cell += fmt.Sprintf(" ≤ %d", bound)
	}
	return cell
}

func sumOf(subs []subResult, f func(subResult) int) int {
	n := 0
	for _, s := range subs {
		n += f(s)
	}
	return n
}

func historyCell(h *historyResult) string {
	if h == nil {
		return "—"
	}
	cell := fmt.Sprintf("%d/%d, %d/%d", h.recovered, h.channels, h.got, h.expected)
	if h.dups+h.outOfOrder+h.missing > 0 {
		cell += fmt.Sprintf(" (%d dup, %d out of order, %d silently missing)", h.dups, h.outOfOrder, h.missing)
	}
	return cell
}

// table renders the rows as Markdown.
func table() string {
	report.mu.Lock()
	rows := slices.Clone(report.rows)
	report.mu.Unlock()
	slices.SortStableFunc(rows, func(a, b row) int {
		if a.num != b.num {
			return a.num - b.num
		}
		return a.replicas - b.replicas
	})
	var b strings.Builder
	b.WriteString("| # | scenario | replicas | published | failed | slowest publish | fanout subscribers: received/expected | WebSocket subscribers: received/expected | lost (≤ allowed) | dup | out of order | history from the fault: channels recovered, messages recovered/acknowledged | detect | recover | notes |\n")
	b.WriteString("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, r := range rows {
		fo, wsr := r.subs[:min(r.fanoutSubs, len(r.subs))], r.subs[min(r.fanoutSubs, len(r.subs)):]
		fmt.Fprintf(&b, "| %d | %s | %d | %d | %d | %s | %s | %s | %s | %d | %d | %s | %s | %s | %s |\n",
			r.num, r.name, r.replicas, r.published, r.failed, dur(r.slowest), receivedCell(fo), receivedCell(wsr), lostCell(r.subs),
			sumOf(r.subs, func(s subResult) int { return s.dups }), sumOf(r.subs, func(s subResult) int { return s.outOfOrder }),
			historyCell(r.history), dur(r.detect), dur(r.recover), r.note)
	}
	return b.String()
}

// printTable logs the table of the rows recorded so far.
func printTable(t *testing.T) {
	t.Logf("reliability table (%s mode):\n%s", mode(), table())
}

func mode() string {
	if full() {
		return "full"
	}
	return "short"
}

// loadAtStart is the 1-minute load average when the run started.
var loadAtStart = func() string { b, _ := os.ReadFile("/proc/loadavg"); return loadAvg(b) }()

func loadAvg(b []byte) string {
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return "?"
	}
	return f[0]
}

// writeReport replaces this mode's section of the report file named by
// PUBMESH_CHAOS_REPORT (make chaos: docs/reliability.md) with this run's
// table and load results. The rest of the file is kept. A relative path is
// taken from the repository's root, where the commands are typed, not from
// this package's directory, where go test runs.
func writeReport() error {
	path := os.Getenv("PUBMESH_CHAOS_REPORT")
	if path == "" {
		return nil
	}
	if !filepath.IsAbs(path) {
		path = filepath.Join("..", path)
	}
	p := paramsFor()
	cmd := "make chaos  # go test -v -count=1 -timeout 60m ./chaos with PUBMESH_CHAOS=full"
	if !full() {
		cmd = "PUBMESH_CHAOS_REPORT=docs/reliability.md go test -count=1 ./chaos  # the short version, as in make test"
	}
	host, _ := os.Hostname()
	load, _ := os.ReadFile("/proc/loadavg")
	var b strings.Builder
	fmt.Fprintf(&b, "Measured %s on %s (%d CPUs, %s/%s; load average at the start %s, at the end %s, on a machine shared with other work), by:\n\n    %s\n\n",
		time.Now().UTC().Format("2006-01-02 15:04 MST"), host, runtime.NumCPU(), runtime.GOOS, runtime.GOARCH, loadAtStart, loadAvg(load), cmd)
	fmt.Fprintf(&b, "Load: %d publishers × %d msg/s over %d channels; %d fanout and %d WebSocket subscribers on every channel; %d nodes; "+
		"agents with --health-interval %s --health-failures %d --lease-ttl %s; %s of load before the fault and %s after recovery.\n\n",
		p.publishers, p.rate, p.channels, p.fanoutSubs, p.wsSubs, p.nodes, p.healthInterval, p.healthFailures, p.leaseTTL, p.pre, p.post)
	b.WriteString(table())
	report.mu.Lock()
	loads := slices.Clone(report.loads)
	report.mu.Unlock()
	if len(loads) > 0 {
		b.WriteString("\nLoad held:\n\n")
		for _, l := range loads {
			b.WriteString("- " + l + "\n")
		}
	}
	badRows.mu.Lock()
	bad := slices.Clone(badRows.rows)
	badRows.mu.Unlock()
	if len(bad) > 0 {
		slices.SortStableFunc(bad, func(a, b badRow) int { return strings.Compare(a.entry, b.entry) })
		b.WriteString("\nBad input (every case also checked to leave no goroutine behind, with goleak, at the end of the run):\n\n")
		b.WriteString("| entry point | input | outcome |\n|---|---|---|\n")
		for _, r := range bad {
			fmt.Fprintf(&b, "| %s | %s | %s |\n", r.entry, r.input, strings.ReplaceAll(r.outcome, "|", "\\|"))
		}
	}
	begin, end := "<!-- chaos:"+mode()+":begin -->", "<!-- chaos:"+mode()+":end -->"
	old, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		return err
	}
	section := begin + "\n" + b.String() + end
	s := string(old)
	i, j := strings.Index(s, begin), strings.Index(s, end)
	if i >= 0 && j > i {
		s = s[:i] + section + s[j+len(end):]
	} else {
		s += "\n" + section + "\n"
	}
	return os.WriteFile(path, []byte(s), 0o644)
}
