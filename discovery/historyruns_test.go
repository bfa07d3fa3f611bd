package discovery_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pubmesh/pubmesh/discovery"
)

func runKey(f *fixture, id string) string {
	return discovery.DefaultPrefix + "/" + f.reg.Cluster() + "/history-runs/" + id
}

func getRun(t *testing.T, f *fixture, id string) (discovery.HistoryRun, bool) {
	t.Helper()
	runs, err := f.reg.HistoryRuns(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range runs {
		if r.RunID == id {
			return r, true
		}
	}
	return discovery.HistoryRun{}, false
}

// A run is recorded once (a second registration of the same Redis run keeps
// the first record), as JSON without ended_at while it runs, and ends once:
// the first end wins, so a hand-off is never undone by a later "ended"
// (nor the other way round).
func TestHistoryRunRecordAndEnd(t *testing.T) {
	t.Parallel()
	f := setup(t)
	ctx := context.Background()
	t0 := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	run := discovery.HistoryRun{Node: "n1", RunID: "aaaa", StartedAt: t0}
	if err := f.reg.RecordRun(ctx, run); err != nil {
		t.Fatal(err)
	}
	again := run
	again.StartedAt = t0.Add(time.Hour)
	again.EndedAt, again.HandedOff = t0, true // ignored: a run is recorded as running
	if err := f.reg.RecordRun(ctx, again); err != nil {
		t.Fatal(err)
	}
	resp, err := f.cli.Get(ctx, runKey(f, "aaaa"))
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("get: %v %v", resp, err)
	}
	if got, want := string(resp.Kvs[0].Value), `{"node":"n1","run_id":"aaaa","started_at":"2025-03-01T12:00:00Z","handed_off":false}`; got != want {
		t.Errorf("value %s, want %s", got, want)
	}

	if err := f.reg.EndRun(ctx, "nope", t0, false); !errors.Is(err, discovery.ErrRunNotFound) {
		t.Errorf("EndRun of an unknown run: %v, want ErrRunNotFound", err)
	}
	end := t0.Add(time.Minute)
	if err := f.reg.EndRun(ctx, "aaaa", end, true); err != nil {
		t.Fatal(err)
	}
	for _, handed := range []bool{false, true} {
		if err := f.reg.EndRun(ctx, "aaaa", end.Add(time.Hour), handed); !errors.Is(err, discovery.ErrRunEnded) {
			t.Errorf("second EndRun(handedOff=%v): %v, want ErrRunEnded", handed, err)
		}
	}
	got, ok := getRun(t, f, "aaaa")
	want := discovery.HistoryRun{Node: "n1", RunID: "aaaa", StartedAt: t0, EndedAt: end, HandedOff: true}
	if !ok || got != want {
		t.Errorf("run %+v, want %+v", got, want)
	}

	// An ended run that comes back (an agent restarted on the same Redis)
	// gets a new life: the first end stays, and the new life can end.
	later := t0.Add(2 * time.Hour)
	if err := f.reg.RecordRun(ctx, discovery.HistoryRun{Node: "n1", RunID: "aaaa", StartedAt: later}); err != nil {
		t.Fatalf("RecordRun of an ended run: %v", err)
	}
	if got, _ := getRun(t, f, "aaaa"); got != want {
		t.Errorf("the first life after RecordRun again: %+v, want %+v", got, want)
	}
	runs, err := f.reg.HistoryRuns(ctx)
	if err != nil || len(runs) != 2 || runs[1].Ended() || !runs[1].StartedAt.Equal(later) {
		t.Fatalf("lives: %+v, %v", runs, err)
	}
	if err := f.reg.RecordRun(ctx, discovery.HistoryRun{Node: "n1", RunID: "aaaa", StartedAt: later.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	if err := f.reg.EndRun(ctx, "aaaa", later.Add(time.Minute), false); err != nil {
		t.Fatalf("EndRun of the second life: %v", err)
	}
	runs, _ = f.reg.HistoryRuns(ctx)
	if len(runs) != 2 || !runs[1].Ended() || runs[1].HandedOff || !runs[0].HandedOff {
		t.Errorf("after the second life ended: %+v", runs)
	}
}

// RecordRun writes a run with no record in one transaction; one whose
// first record is gone (pruned) but whose later life is still running
// keeps that life rather than getting a second running record.
func TestHistoryRunRecordWithoutFirstLife(t *testing.T) {
	t.Parallel()
	f := setup(t)
	ctx := context.Background()
	t0 := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	life := `{"node":"n1","run_id":"bbbb","started_at":"2025-03-01T12:00:00Z","handed_off":false}`
	if _, err := f.cli.Put(ctx, runKey(f, "bbbb")+".1", life); err != nil {
		t.Fatal(err)
	}
	if err := f.reg.RecordRun(ctx, discovery.HistoryRun{Node: "n1", RunID: "bbbb", StartedAt: t0.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	runs, err := f.reg.HistoryRuns(ctx)
	if err != nil || len(runs) != 1 || !runs[0].StartedAt.Equal(t0) || runs[0].Ended() {
		t.Fatalf("runs after RecordRun: %+v, %v; want the one running life", runs, err)
	}
}

// EndRun is a compare-and-swap: of many concurrent ends exactly one wins,
// and the record holds that one's handed_off.
func TestHistoryRunEndRace(t *testing.T) {
	t.Parallel()
	f := setup(t)
	ctx := context.Background()
	if err := f.reg.RecordRun(ctx, discovery.HistoryRun{Node: "n1", RunID: "r", StartedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	const n = 8
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { errs[i] = f.reg.EndRun(ctx, "r", time.Unix(int64(1000+i), 0), i%2 == 0) })
	}
	wg.Wait()
	winner := -1
	for i, err := range errs {
		switch {
		case err == nil && winner >= 0:
			t.Errorf("EndRun %d and %d both succeeded", winner, i)
		case err == nil:
			winner = i
		case !errors.Is(err, discovery.ErrRunEnded):
			t.Errorf("EndRun %d: %v, want nil or ErrRunEnded", i, err)
		}
	}
	if winner < 0 {
		t.Fatal("no EndRun succeeded")
	}
	got, _ := getRun(t, f, "r")
	if !got.EndedAt.Equal(time.Unix(int64(1000+winner), 0)) || got.HandedOff != (winner%2 == 0) {
		t.Errorf("run %+v, want the end of EndRun %d", got, winner)
	}
}

// HistoryRuns lists runs oldest first and skips values that are not runs;
// RecordRun refuses ids that would change the key layout.
func TestHistoryRunsList(t *testing.T) {
	t.Parallel()
	f := setup(t)
	ctx := context.Background()
	t0 := time.Now().UTC().Truncate(time.Second)
	for i, id := range []string{"c", "a", "b"} {
		if err := f.reg.RecordRun(ctx, discovery.HistoryRun{Node: "n" + id, RunID: id, StartedAt: t0.Add(time.Duration(2-i) * time.Second)}); err != nil {
			t.Fatal(err)
		}
	}
	for key, val := range map[string]string{
		"garbage":  "not json",
		"mismatch": `{"node":"n","run_id":"other","started_at":"2025-01-01T00:00:00Z"}`,
		"nostart":  `{"node":"n","run_id":"nostart"}`,
	} {
		if _, err := f.cli.Put(ctx, runKey(f, key), val); err != nil {
			t.Fatal(err)
		}
	}
	runs, err := f.reg.HistoryRuns(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, r := range runs {
		ids = append(ids, r.RunID)
	}
	if got := strings.Join(ids, ","); got != "b,a,c" {
		t.Errorf("runs %s, want b,a,c (oldest start first, bad values skipped)", got)
	}
	for _, bad := range []discovery.HistoryRun{
		{Node: "n", RunID: "a/b", StartedAt: t0},
		{Node: "", RunID: "x", StartedAt: t0},
		{Node: "n", RunID: "x"},
	} {
		if err := f.reg.RecordRun(ctx, bad); err == nil {
			t.Errorf("RecordRun(%+v) succeeded", bad)
		}
	}
}

// PruneRuns deletes the runs that ended before the cut, and only those: a
// run that still runs is kept however old, and so is one that ended after
// the cut.
func TestHistoryRunsPrune(t *testing.T) {
	t.Parallel()
	f := setup(t)
	ctx := context.Background()
	now := time.Now()
	cut := now.Add(-time.Hour)
	for _, tc := range []struct {
		id      string
		started time.Time
		ended   time.Time // zero: running
		kept    bool
	}{
		{"old-ended", now.Add(-5 * time.Hour), now.Add(-2 * time.Hour), false},
		{"old-handed-off", now.Add(-5 * time.Hour), now.Add(-90 * time.Minute), false},
		{"old-running", now.Add(-5 * time.Hour), time.Time{}, true},
		{"recent-ended", now.Add(-5 * time.Hour), now.Add(-10 * time.Minute), true},
		{"new", now, time.Time{}, true},
	} {
		t.Run(tc.id, func(t *testing.T) {
			if err := f.reg.RecordRun(ctx, discovery.HistoryRun{Node: "n1", RunID: tc.id, StartedAt: tc.started}); err != nil {
				t.Fatal(err)
			}
			if !tc.ended.IsZero() {
				if err := f.reg.EndRun(ctx, tc.id, tc.ended, tc.id == "old-handed-off"); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
	n, err := f.reg.PruneRuns(ctx, cut)
	if err != nil || n != 2 {
		t.Fatalf("PruneRuns: %d, %v; want 2 deleted", n, err)
	}
	runs, err := f.reg.HistoryRuns(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, r := range runs {
		ids = append(ids, r.RunID)
	}
	if got := strings.Join(ids, ","); got != "old-running,recent-ended,new" {
		t.Errorf("left %s, want old-running,recent-ended,new", got)
	}
	if n, err := f.reg.PruneRuns(ctx, cut); err != nil || n != 0 {
		t.Errorf("second PruneRuns: %d, %v; want 0", n, err)
	}
}
