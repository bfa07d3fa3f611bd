package discovery

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// A node run is one life of a node's Redis (one run_id): the history
// streams it holds live and die with it. Each run is recorded under
// history-runs/<run_id>, without a lease, so that a reader of history can
// tell a run that handed its history off before it ended (a drain) from
// one that ended and took part of the history with it (a crash, a Redis
// restart): a recovery across the latter cannot be proven complete. See
// docs/history.md.

// ErrRunNotFound is how EndRun fails when no run has the id.
var ErrRunNotFound = errors.New("discovery: no such history run")

// ErrRunEnded is how EndRun fails when no life of the run is running: the
// first end of each life is kept, with its time and its handed_off.
var ErrRunEnded = errors.New("discovery: history run already ended")

// HistoryRun is the value at history-runs/<run_id>.
type HistoryRun struct {
	// Node is the id of the node that ran it.
	Node string `json:"node"`
	// RunID is the Redis run_id (INFO server), as in Node.RunID.
	RunID     string    `json:"run_id"`
	StartedAt time.Time `json:"started_at"`
	// EndedAt is when the run ended (its Redis stopped, or its history was
	// handed off); zero, and absent from the JSON, while it runs.
	EndedAt time.Time `json:"ended_at,omitzero"`
	// HandedOff: before it ended, the run copied all of its history to other
	// nodes (a drain), so nothing it held is lost.
	HandedOff bool `json:"handed_off"`
}

// Ended reports whether the run has ended.
func (h HistoryRun) Ended() bool { return !h.EndedAt.IsZero() }

// Validate checks the ids (they make the key) and the times.
func (h HistoryRun) Validate() error {
	if err := ValidID(h.Node); err != nil {
		return fmt.Errorf("discovery: history run node: %w", err)
	}
	if err := ValidID(h.RunID); err != nil {
		return fmt.Errorf("discovery: history run id: %w", err)
	}
	if h.StartedAt.IsZero() {
		return fmt.Errorf("discovery: history run %s: no started_at", h.RunID)
	}
	if h.HandedOff && !h.Ended() {
		return fmt.Errorf("discovery: history run %s: handed off but not ended", h.RunID)
	}
	return nil
}

// decodeRun parses and validates a run value; the key's run id must match.
func decodeRun(keyID string, value []byte) (HistoryRun, error) {
	var h HistoryRun
	if err := json.Unmarshal(value, &h); err != nil {
		return HistoryRun{}, fmt.Errorf("discovery: history run %s: bad value: %w", keyID, err)
	}
	if h.RunID != keyID && !strings.HasPrefix(keyID, h.RunID+".") {
		return HistoryRun{}, fmt.Errorf("discovery: history run key %s holds run id %q", keyID, h.RunID)
	}
	if err := h.Validate(); err != nil {
		return HistoryRun{}, err
	}
	return h, nil
}

// A run's first life is recorded at history-runs/<run_id>. A run that
// ended (a fanout client saw its node leave without a hand-off: the agent
// died, or the host) may come back with the same Redis and its history: it
// then gets a new record, history-runs/<run_id>.<n>, one per life, so that
// the end of the earlier life stays (a recovery across it was not proven)
// and this life is watched again for losses.

// runLife is one recorded life of a run and where it is stored.
type runLife struct {
	run HistoryRun
	key string
	rev int64
}

// runLives reads the records of runID.
func (r *Registry) runLives(ctx context.Context, runID string) ([]runLife, error) {
	exact := r.keys.historyRun(runID)
	resp, err := r.cli.Txn(ctx).Then(clientv3.OpGet(exact), clientv3.OpGet(exact+".", clientv3.WithPrefix())).Commit()
	if err != nil {
		return nil, err
	}
	var out []runLife
	for _, rr := range resp.Responses {
		for _, kv := range rr.GetResponseRange().GetKvs() {
			id := strings.TrimPrefix(string(kv.Key), r.keys.historyRuns())
			run, err := decodeRun(id, kv.Value)
			if err != nil || run.RunID != runID {
				continue
			}
			out = append(out, runLife{run, string(kv.Key), kv.ModRevision})
		}
	}
	return out, nil
}

// RecordRun records run as running, unless a life of it is recorded as
// running already (a node registering the same Redis run again keeps that
// record). If every recorded life of it has ended, it records a new life.
// It ignores run.EndedAt and run.HandedOff.
func (r *Registry) RecordRun(ctx context.Context, run HistoryRun) error {
	run.EndedAt, run.HandedOff = time.Time{}, false
	run.StartedAt = run.StartedAt.UTC()
	if err := run.Validate(); err != nil {
		return err
	}
	val, _ := json.Marshal(run)
	// A run not recorded at all (the usual case: a redis-server that just
	// started has a new random run_id) is recorded in one transaction
	// without a read: it is on the path of a node's join.
	base := r.keys.historyRun(run.RunID)
	ok, err := r.putIfAbsent(ctx, base, val, clientv3.Compare(clientv3.CreateRevision(base+"."), "=", 0).WithPrefix())
	if err != nil || ok {
		return err
	}
	for range 5 {
		lives, err := r.runLives(ctx, run.RunID)
		if err != nil {
			return fmt.Errorf("discovery: record history run %s: %w", run.RunID, err)
		}
		if slices.ContainsFunc(lives, func(l runLife) bool { return !l.run.Ended() }) {
			return nil
		}
		key := r.keys.historyRun(run.RunID)
		if len(lives) > 0 {
			key += "." + strconv.Itoa(len(lives))
		}
		if ok, err := r.putIfAbsent(ctx, key, val); err != nil || ok {
			return err
		}
	}
	return fmt.Errorf("discovery: record history run %s: the records keep changing", run.RunID)
}

// putIfAbsent writes a run record at key if key does not exist and the
// further conditions hold, and reports whether it did.
func (r *Registry) putIfAbsent(ctx context.Context, key string, val []byte, also ...clientv3.Cmp) (bool, error) {
	txn, err := r.cli.Txn(ctx).
		If(append([]clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(key), "=", 0)}, also...)...).
		Then(clientv3.OpPut(key, string(val))).
		Commit()
	if err != nil {
		return false, fmt.Errorf("discovery: record history run at %s: %w", key, err)
	}
	return txn.Succeeded, nil
}

// EndRun ends the running life of run runID at at, handed off or not. Only
// the first end counts (a compare-and-swap on the record's mod revision):
// a run with no running life fails with ErrRunEnded and keeps its ends, so
// a later "not handed off" cannot undo a hand-off, nor the other way round.
// A run that is not recorded fails with ErrRunNotFound.
func (r *Registry) EndRun(ctx context.Context, runID string, at time.Time, handedOff bool) error {
	if err := ValidID(runID); err != nil {
		return fmt.Errorf("discovery: end history run: %w", err)
	}
	if at.IsZero() {
		return fmt.Errorf("discovery: end history run %s: no end time", runID)
	}
	// Retried only when another writer changed a record between the read
	// and the write; then the read sees its end.
	for range 5 {
		lives, err := r.runLives(ctx, runID)
		if err != nil {
			return fmt.Errorf("discovery: end history run %s: %w", runID, err)
		}
		if len(lives) == 0 {
			return fmt.Errorf("discovery: end history run %s: %w", runID, ErrRunNotFound)
		}
		i := slices.IndexFunc(lives, func(l runLife) bool { return !l.run.Ended() })
		if i < 0 {
			last := lives[len(lives)-1].run
			return fmt.Errorf("discovery: end history run %s: %w at %s (handed_off %v)", runID, ErrRunEnded,
				last.EndedAt.Format(time.RFC3339Nano), last.HandedOff)
		}
		run := lives[i].run
		run.EndedAt, run.HandedOff = at.UTC(), handedOff
		val, _ := json.Marshal(run)
		txn, err := r.cli.Txn(ctx).
			If(clientv3.Compare(clientv3.ModRevision(lives[i].key), "=", lives[i].rev)).
			Then(clientv3.OpPut(lives[i].key, string(val))).
			Commit()
		if err != nil {
			return fmt.Errorf("discovery: end history run %s: %w", runID, err)
		}
		if txn.Succeeded {
			return nil
		}
	}
	return fmt.Errorf("discovery: end history run %s: the record keeps changing", runID)
}

// HistoryRuns returns every recorded run, oldest start first. Values that
// do not decode are skipped and logged.
func (r *Registry) HistoryRuns(ctx context.Context) ([]HistoryRun, error) {
	runs, _, err := r.historyRuns(ctx)
	return runs, err
}

// historyRuns is HistoryRuns with each record's key and mod revision.
func (r *Registry) historyRuns(ctx context.Context) ([]HistoryRun, []runLife, error) {
	prefix := r.keys.historyRuns()
	resp, err := r.cli.Get(ctx, prefix, clientv3.WithPrefix())
	if err != nil {
		return nil, nil, fmt.Errorf("discovery: read history runs: %w", err)
	}
	type entry = runLife
	var es []entry
	for _, kv := range resp.Kvs {
		id := string(kv.Key[len(prefix):])
		run, err := decodeRun(id, kv.Value)
		if err != nil {
			r.cfg.Logger.Warn("discovery: ignoring a bad history run", "key", string(kv.Key), "err", err)
			continue
		}
		es = append(es, entry{run, string(kv.Key), kv.ModRevision})
	}
	slices.SortFunc(es, func(a, b entry) int {
		return cmp.Or(a.run.StartedAt.Compare(b.run.StartedAt), cmp.Compare(a.run.RunID, b.run.RunID))
	})
	runs := make([]HistoryRun, len(es))
	for i, e := range es {
		runs[i] = e.run
	}
	return runs, es, nil
}

// PruneRuns deletes the runs that ended before olderThan and returns how
// many it deleted. A run that is still running is never deleted, however
// old. Give it a time at least the longest history_ttl ago: a run that
// ended more recently may still matter to a recovery.
func (r *Registry) PruneRuns(ctx context.Context, olderThan time.Time) (int, error) {
	runs, lives, err := r.historyRuns(ctx)
	if err != nil {
		return 0, err
	}
	n := 0
	for i, run := range runs {
		if !run.Ended() || !run.EndedAt.Before(olderThan) {
			continue
		}
		key := lives[i].key
		// Only the run as read: one rewritten meanwhile is left for later.
		txn, err := r.cli.Txn(ctx).
			If(clientv3.Compare(clientv3.ModRevision(key), "=", lives[i].rev)).
			Then(clientv3.OpDelete(key)).
			Commit()
		if err != nil {
			return n, fmt.Errorf("discovery: prune history runs: %w", err)
		}
		if txn.Succeeded {
			n++
		}
	}
	return n, nil
}
