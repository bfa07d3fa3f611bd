package broker

import (
	"context"
	"errors"
	"time"

	"github.com/pubmesh/pubmesh/clusterconfig"
	"github.com/pubmesh/pubmesh/discovery"
)

// This file keeps the node's runs in etcd (discovery.HistoryRun): each
// Redis run the agent registers is recorded before clients can publish to
// it, and ended when its history goes away with it (its Redis exited or was
// stopped, or the agent finds it open after a crash) or after a drain
// handed it off. Readers of history use the records to tell a loss from a
// hand-off (docs/history.md, "Recovery from P", step 5). All of it runs on
// the run goroutine.

// minRunsKept is the least time an ended run's record is kept, whatever the
// cluster configuration's history_ttl.
const minRunsKept = time.Hour

// runsState is the run goroutine's view of its runs in etcd.
type runsState struct {
	id      string       // the Redis run recorded and not ended by this agent; "" if none
	swept   bool         // earlier open runs of this node id have been ended
	pending []pendingEnd // ends that failed, retried on the health ticks
}

// pendingEnd is an EndRun to retry.
type pendingEnd struct {
	id        string
	at        time.Time
	handedOff bool
}

// recordRun records the Redis run runID before the node registers with it:
// clients publish only to registered nodes, so every run that may hold
// history has a record. A new run (an attached Redis that restarted) ends
// the one recorded before it.
func (a *Agent) recordRun(ctx context.Context, s *runState, runID string, started time.Time) error {
	if s.runs.id == runID {
		return nil
	}
	err := a.reg.RecordRun(ctx, discovery.HistoryRun{Node: a.cfg.ID, RunID: runID, StartedAt: started})
	if err != nil {
		a.m.runErrors.Inc()
		return err
	}
	if s.runs.id != "" {
		a.log.Info("redis runs a new run_id: the old run's history is gone", "old_run_id", s.runs.id, "run_id", runID)
		a.endRun(ctx, s, time.Now(), false)
	}
	s.runs.id, s.runs.swept = runID, false
	a.log.Info("history run recorded", "run_id", runID)
	return nil
}

// sweepRuns ends the runs of this node id that are recorded as running but
// are not the current one: their Redis is gone (the agent, or its host,
// crashed before it could end them). It runs once the node holds its id (a
// second agent started with the same id by mistake must not end the first's
// run), and again on the health ticks until it succeeds.
func (a *Agent) sweepRuns(ctx context.Context, s *runState) {
	if s.runs.swept || s.runs.id == "" {
		return
	}
	octx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	runs, err := a.reg.HistoryRuns(octx)
	if err != nil {
		a.m.runErrors.Inc()
		a.log.Warn("cannot read the history runs; retrying", "err", err)
		return
	}
	now := time.Now()
	for _, r := range runs {
		if r.Node != a.cfg.ID || r.Ended() || r.RunID == s.runs.id {
			continue
		}
		// When it died is unknown: now is the latest it may have lived,
		// which makes more recoveries say recovered:false, never fewer.
		err := a.reg.EndRun(octx, r.RunID, now, false)
		switch {
		case err == nil:
			a.log.Warn("an earlier run of this node ended without handing its history off (the agent or its host stopped abruptly)",
				"run_id", r.RunID, "started_at", r.StartedAt)
		case errors.Is(err, discovery.ErrRunEnded), errors.Is(err, discovery.ErrRunNotFound):
			// Ended (or pruned) by someone else meanwhile.
		default:
			a.m.runErrors.Inc()
			a.log.Warn("cannot end an earlier history run; retrying", "run_id", r.RunID, "err", err)
			return
		}
	}
	s.runs.swept = true
}

// endRun ends the current run at at, handed off or not. A failure is
// retried on the health ticks (see retryRunEnds).
func (a *Agent) endRun(ctx context.Context, s *runState, at time.Time, handedOff bool) {
	id := s.runs.id
	if id == "" {
		return
	}
	s.runs.id = ""
	a.endRunID(ctx, s, pendingEnd{id: id, at: at, handedOff: handedOff})
}

// endRunID writes one end, or queues it for a retry.
func (a *Agent) endRunID(ctx context.Context, s *runState, e pendingEnd) {
	octx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	err := a.reg.EndRun(octx, e.id, e.at, e.handedOff)
	switch {
	case err == nil:
		a.log.Info("history run ended", "run_id", e.id, "handed_off", e.handedOff)
	case errors.Is(err, discovery.ErrRunEnded), errors.Is(err, discovery.ErrRunNotFound):
		// Ended by someone else first (a fanout client that saw the node
		// go), or deleted: the first end stands.
		a.log.Info("history run not ended by the agent", "run_id", e.id, "reason", err)
	default:
		a.m.runErrors.Inc()
		a.log.Warn("cannot end the history run in etcd; retrying", "run_id", e.id, "handed_off", e.handedOff, "err", err)
		s.runs.pending = append(s.runs.pending, e)
	}
}

// retryRunEnds retries the ends that failed, and the sweep.
func (a *Agent) retryRunEnds(ctx context.Context, s *runState) {
	pending := s.runs.pending
	s.runs.pending = nil
	for _, e := range pending {
		a.endRunID(ctx, s, e)
	}
	if s.reg != nil {
		a.sweepRuns(ctx, s)
	}
}

// pruneRuns deletes the records of runs that ended longer ago than any
// history they might matter to: the longest history_ttl of the cluster
// configuration in force, and at least minRunsKept. A failure only leaves
// more records, deleted at the next start of any agent.
func (a *Agent) pruneRuns(ctx context.Context, c *configState) {
	keep := longestHistoryTTL(c.current().Doc)
	octx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	n, err := a.reg.PruneRuns(octx, time.Now().Add(-keep))
	if err != nil {
		a.log.Warn("cannot prune old history runs", "err", err)
		return
	}
	if n > 0 {
		a.log.Info("pruned old history runs", "deleted", n, "ended_before", keep)
	}
}

// longestHistoryTTL is the longest history_ttl of doc's namespaces (the
// implicit default one included), and at least minRunsKept.
func longestHistoryTTL(doc *clusterconfig.Document) time.Duration {
	longest := max(minRunsKept, time.Duration(clusterconfig.DefaultNamespace.HistoryTTL))
	for _, ns := range doc.Namespaces {
		longest = max(longest, time.Duration(ns.HistoryTTL))
	}
	return longest
}

// flushRunEnds tries the failed ends once more as the agent stops. What is
// still left is ended by the next start of this node id (sweepRuns).
func (a *Agent) flushRunEnds(s *runState) {
	pending := s.runs.pending
	s.runs.pending = nil
	for _, e := range pending {
		a.endRunID(context.Background(), s, e)
	}
	for _, e := range s.runs.pending {
		a.log.Warn("history run left open in etcd; the next start of this node ends it", "run_id", e.id)
	}
}
