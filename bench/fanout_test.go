package bench_test

import (
	"context"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pubmesh/pubmesh/bench"
)

// TestFanoutRow builds pubmesh, runs fan-out row 12 on its gateway with
// the same binary as the compared gateway, and checks the row and its
// ratios: frames delivered, none lost, CPU and memory measured, both
// gateways reported, the ratio computed, the table written.
func TestFanoutRow(t *testing.T) {
	if testing.Short() {
		t.Skip("builds pubmesh and opens 2 000 WebSocket connections")
	}
	bin := filepath.Join(t.TempDir(), "pubmesh")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/pubmesh/pubmesh/cmd/pubmesh").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	rep, err := bench.Run(ctx, bench.Config{
		Rows: []int{12}, Repeat: 1, Duration: time.Second, Nodes: 2, Settle: time.Second,
		SkipScaling: true, SkipLatency: true, GatewayBinary: bin, CompareGateway: bin,
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Fanout) != 2 || rep.Fanout[0].Baseline || !rep.Fanout[1].Baseline {
		t.Fatalf("fan-out results %+v, want this build's then the compared one", rep.Fanout)
	}
	for _, r := range rep.Fanout {
		if r.Err != "" {
			t.Fatalf("%s (%s): %s", r.Key, r.Gateway, r.Err)
		}
		if r.Published == 0 || r.Delivered != r.Expected || r.Lost != 0 || r.Expected != r.Published*100 {
			t.Errorf("%s: published %d, expected %d, delivered %d", r.Gateway, r.Published, r.Expected, r.Delivered)
		}
		if r.GatewayCPUPerFrameUs <= 0 || r.RSSPerConnKiB <= 0 || r.FramesPerBatch < 1 {
			t.Errorf("%s: CPU %g µs/frame, %g KiB/connection, %g frames/batch", r.Gateway, r.GatewayCPUPerFrameUs, r.RSSPerConnKiB, r.FramesPerBatch)
		}
	}
	var found int
	for _, x := range rep.Ratios {
		if strings.HasPrefix(x.Name, "row 12 gateway") {
			found++
			if x.Missing != "" || x.Value <= 0 {
				t.Errorf("ratio %s: %g, missing %q", x.Name, x.Value, x.Missing)
			}
		}
	}
	if found != 2 {
		t.Errorf("%d row 12 ratios, want 2 (memory, CPU against the compared gateway)", found)
	}
	var md strings.Builder
	rep.Markdown(&md)
	if !strings.Contains(md.String(), "| 12 WebSocket fan-out, 1 000 clients over 10 channels | this build |") {
		t.Errorf("no fan-out table:\n%s", md.String())
	}
	if len(rep.ServersLeft) != 0 {
		t.Errorf("redis-servers left running: %v", rep.ServersLeft)
	}
}
