package broker_test

import (
	"context"
	"syscall"
	"testing"
	"time"

	"github.com/pubmesh/pubmesh/discovery"
	"github.com/pubmesh/pubmesh/pubmeshtest"
)

// The agent keeps its node's runs in etcd: at start it prunes the runs that
// ended longer ago than the longest history_ttl (here 3h, above the 1h
// floor), ends the runs of its node id that an earlier agent left open (it
// crashed), and records its Redis's run before the node turns ready. A
// redis-server killed with SIGKILL ends its run, not handed off, and the
// restarted one is recorded as a new run.
func TestAgentRecordsAndEndsRuns(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	reg := newRegistry(t)
	pubmeshtest.ApplyConfig(t, reg, `namespaces: [{match: "chat.*", history_size: 10, history_ttl: 3h}]`)
	cfg := fastConfig(t, reg)
	now := time.Now()
	for _, r := range []struct {
		node, id string
		started  time.Time
		ended    time.Time // zero: left open
	}{
		{cfg.ID, "crashed", now.Add(-time.Hour), time.Time{}},
		{"other-node", "other-open", now.Add(-time.Hour), time.Time{}},
		{"other-node", "ended-5h-ago", now.Add(-6 * time.Hour), now.Add(-5 * time.Hour)},
		{"other-node", "ended-2h-ago", now.Add(-6 * time.Hour), now.Add(-2 * time.Hour)},
	} {
		if err := reg.RecordRun(ctx, discovery.HistoryRun{Node: r.node, RunID: r.id, StartedAt: r.started}); err != nil {
			t.Fatal(err)
		}
		if !r.ended.IsZero() {
			if err := reg.EndRun(ctx, r.id, r.ended, false); err != nil {
				t.Fatal(err)
			}
		}
	}

	a := start(t, cfg)
	waitReady(t, a)
	run1 := a.Node().RunID
	for _, c := range []struct {
		id              string
		recorded, ended bool
		handedOff       bool
		endedAfter      time.Time
	}{
		{id: run1, recorded: true},
		{id: "crashed", recorded: true, ended: true, endedAfter: now},
		{id: "other-open", recorded: true},
		{id: "ended-5h-ago"},
		{id: "ended-2h-ago", recorded: true, ended: true},
	} {
		r, ok := historyRun(t, reg, c.id)
		if ok != c.recorded || r.Ended() != c.ended || r.HandedOff != c.handedOff || (ok && r.EndedAt.Before(c.endedAfter)) {
			t.Errorf("run %s: %+v (recorded %v), want recorded %v, ended %v (after %s), handed off %v",
				c.id, r, ok, c.recorded, c.ended, c.endedAfter.Format(time.StampMilli), c.handedOff)
		}
	}
	if r, _ := historyRun(t, reg, run1); r.Node != cfg.ID || r.StartedAt.IsZero() {
		t.Errorf("run of the node: %+v", r)
	}

	pid := a.PID()
	killed := time.Now()
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	for a.PID() == 0 || a.PID() == pid || a.State() != discovery.StateReady || a.Node().RunID == run1 {
		if time.Since(t0) > 20*time.Second {
			t.Fatal("the child was not restarted")
		}
		time.Sleep(10 * time.Millisecond)
	}
	run2 := a.Node().RunID
	if r, ok := historyRun(t, reg, run1); !ok || !r.Ended() || r.HandedOff || r.EndedAt.Before(killed) {
		t.Errorf("run of the killed redis-server: %+v (recorded %v), want ended after the kill, not handed off", r, ok)
	}
	if r, ok := historyRun(t, reg, run2); !ok || r.Ended() || r.Node != cfg.ID {
		t.Errorf("run of the restarted redis-server: %+v (recorded %v), want running", r, ok)
	}
}
