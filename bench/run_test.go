package bench_test

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pubmesh/pubmesh/bench"
)

// TestRunQuick runs every row, the scaling and the latency tables with a
// tiny workload, and checks the report: no errors, no loss, every server
// stopped, the three files written. It asserts no timing.
func TestRunQuick(t *testing.T) {
	if testing.Short() {
		t.Skip("starts 20 redis-servers")
	}
	t.Parallel()
	dir := t.TempDir()
	var progress strings.Builder
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	rep, err := bench.Run(ctx, bench.Config{
		Channels: 4, Publishers: 8, PipelineWorkers: 2, Batch: 4, Subscribers: 2, PayloadSize: 64,
		Duration: 300 * time.Millisecond, Nodes: 2, NodeCounts: []int{1, 2}, LoadFractions: []float64{0.5},
		Settle: 3 * time.Second, OutDir: dir, Progress: &progress, Repeat: 1,
	})
	if err != nil {
		t.Fatal(err)
	}
	// The latency table runs row 8's cluster (history on) at the same
	// rate as pubmesh where row 8 sustains it (below 0.9 of its max).
	hist := 0
	for _, l := range rep.Latency {
		if l.History {
			hist++
		}
	}
	for _, r := range rep.Rows {
		if r.Row == 8 && hist == 0 && rep.Latency[0].OfferedRate < 0.9*r.PublishedPerSec {
			t.Errorf("no history-on latency run at %g msg/s, below row 8's max %g", rep.Latency[0].OfferedRate, r.PublishedPerSec)
		}
	}
	if len(rep.Rows) != 11 || len(rep.Scaling) != 2 || len(rep.Latency) != 2+hist {
		t.Fatalf("got %d rows, %d scaling, %d latency; want 11, 2, %d", len(rep.Rows), len(rep.Scaling), len(rep.Latency), 2+hist)
	}
	all := append(append(append([]bench.Result(nil), rep.Rows...), rep.Scaling...), rep.Latency...)
	for _, r := range all {
		if r.Err != "" {
			t.Errorf("%s: %s", r.Key, r.Err)
			continue
		}
		if r.Row > 0 && len(r.Attempts) != 1 {
			t.Errorf("%s: %d attempts, want 1", r.Key, len(r.Attempts))
		}
		if r.Published == 0 || r.Delivered == 0 {
			t.Errorf("%s: published %d, delivered %d", r.Key, r.Published, r.Delivered)
		}
		if r.Lost != 0 || r.PublishErrors != 0 {
			t.Errorf("%s: lost %d, %d publish errors (%s)", r.Key, r.Lost, r.PublishErrors, r.FirstError)
		}
		if r.P50us <= 0 || r.P99us < r.P50us || r.P999us < r.P99us {
			t.Errorf("%s: latencies p50 %g p99 %g p99.9 %g µs", r.Key, r.P50us, r.P99us, r.P999us)
		}
		if r.RedisCPUSeconds <= 0 || r.ClientCPUSeconds <= 0 {
			t.Errorf("%s: CPU redis %g s, client %g s", r.Key, r.RedisCPUSeconds, r.ClientCPUSeconds)
		}
	}
	if lat := rep.Latency[0]; lat.OfferedRate <= 0 || lat.LoadFraction != 0.5 {
		t.Errorf("latency run: offered %g at fraction %g", lat.OfferedRate, lat.LoadFraction)
	}
	if len(rep.Ratios) != 15 {
		t.Errorf("%d ratios, want 15", len(rep.Ratios))
	}
	for _, x := range rep.Ratios {
		if x.Missing != "" && (hist > 0 || !strings.HasPrefix(x.Name, "history on ÷ off")) {
			t.Errorf("ratio %s: %s", x.Name, x.Missing)
		}
	}
	// Rows 1 to 11, then the scaling (1 and 2 nodes) and latency runs.
	if rep.ServersStarted != 1+1+3+3+2+2+2+2+2+2+2+1+2+2+2*hist+1 {
		t.Errorf("%d redis-servers started", rep.ServersStarted)
	}
	if len(rep.ServersLeft) != 0 {
		t.Errorf("redis-servers left running: %v", rep.ServersLeft)
	}
	if rep.Failed() {
		t.Error("report says it failed")
	}
	if !strings.Contains(progress.String(), "published") {
		t.Errorf("no progress line: %q", progress.String())
	}

	md, err := os.ReadFile(filepath.Join(dir, "latest.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"| 1 go-redis, 1 node, hand-pipelined |", "| 7 pubmesh, 2 nodes, via WebSocket gateway |",
		"| 8 pubmesh, 2 nodes, history on (every channel) |", "row 8 (history on) Redis CPU/msg ÷ row 5",
		"| 9 pubmesh, 2 nodes, PublishAsync from 1 goroutine |", "| 10 pubmesh, 2 nodes, Publish from 4 goroutines |",
		"### pubmesh by node count", "### pubmesh latency at fixed offered rates", "row 5 delivered/s ÷ row 1",
		"history on ÷ off at"} {
		if !strings.Contains(string(md), want) {
			t.Errorf("latest.md lacks %q", want)
		}
	}
	var back bench.Report
	js, err := os.ReadFile(filepath.Join(dir, "latest.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(js, &back); err != nil {
		t.Fatal(err)
	}
	if len(back.Rows) != len(rep.Rows) || back.Rows[4].Delivered != rep.Rows[4].Delivered {
		t.Errorf("latest.json does not round-trip the rows")
	}
	png, err := os.ReadFile(filepath.Join(dir, "latest.png"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(string(png), "\x89PNG") {
		t.Error("latest.png is not a PNG")
	}
}

// TestRunRepeat measures a row twice and keeps both attempts.
func TestRunRepeat(t *testing.T) {
	t.Parallel()
	rep, err := bench.Run(context.Background(), bench.Config{
		Rows: []int{2}, Repeat: 2, Channels: 2, Publishers: 4, Subscribers: 1, Duration: 200 * time.Millisecond,
		Settle: 300 * time.Millisecond, SkipScaling: true, SkipLatency: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Rows) != 1 || len(rep.Rows[0].Attempts) != 2 || rep.ServersStarted != 2 {
		t.Fatalf("rows %d, attempts %+v, servers %d", len(rep.Rows), rep.Rows, rep.ServersStarted)
	}
	best := rep.Rows[0].DeliveredPerSec
	for _, a := range rep.Rows[0].Attempts {
		if a.Err != "" || a.Lost != 0 || a.DeliveredPerSec > best {
			t.Errorf("attempt %+v, kept delivered/s %g", a, best)
		}
	}
	var b strings.Builder
	rep.Markdown(&b)
	if !strings.Contains(b.String(), "Each row was measured 2 times") {
		t.Errorf("no attempts in the markdown:\n%s", b.String())
	}
}

func TestConfigValidate(t *testing.T) {
	t.Parallel()
	for _, c := range []bench.Config{
		{PayloadSize: 10},
		{Rate: -1},
		{Rows: []int{99}},
		{Rows: []int{0}},
		{NodeCounts: []int{0}},
		{LoadFractions: []float64{1.5}},
		{PubsubBufferLimit: "lots"},
	} {
		if err := c.Validate(); err == nil {
			t.Errorf("%+v: no error", c)
		}
	}
	if err := bench.DefaultConfig().Validate(); err != nil {
		t.Errorf("defaults: %v", err)
	}
}

func TestRunCanceled(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	rep, err := bench.Run(ctx, bench.Config{Rows: []int{1}, SkipScaling: true, SkipLatency: true})
	if err == nil {
		t.Fatal("no error from a canceled run")
	}
	if rep == nil || len(rep.ServersLeft) != 0 {
		t.Fatalf("report %+v", rep)
	}
}
