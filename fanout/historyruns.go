package fanout

import (
	"context"
	"time"

	"github.com/pubmesh/pubmesh/discovery"
)

// lostRunsSince reports whether a node run that held history and did not
// hand it off (a crash, a Redis restart, a lost host) was alive after at,
// the newest message a position covers (less clockSkew for what was in
// flight), so a recovery from that position cannot be proven complete.
// With Replicas ≥ 2 every message is on as many nodes: fewer lost runs
// than the smallest replica count among the messages read lose nothing
// (docs/history.md, step 5).
func (c *Client) lostRunsSince(ctx context.Context, at int64, kept []*histEntry) (bool, error) {
	runs, err := c.historyRuns(ctx)
	if err != nil {
		return true, err
	}
	live := map[string]bool{}
	for _, n := range c.Nodes().Nodes {
		live[n.RunID] = true
	}
	from := time.Unix(0, at).Add(-clockSkew)
	lost := 0
	for _, r := range runs {
		if r.HandedOff || (live[r.RunID] && r.EndedAt.IsZero()) {
			continue
		}
		if !r.EndedAt.IsZero() && r.EndedAt.Before(from) {
			continue
		}
		lost++
	}
	if lost == 0 {
		return false, nil
	}
	minR := 0
	for i, e := range kept {
		if i == 0 || e.r < minR {
			minR = e.r
		}
	}
	return len(kept) == 0 || minR <= lost, nil
}

// runsCacheFor is how long a read of the node runs serves recoveries, as
// long as the membership the client sees has not changed since: a
// reconnect storm (a thousand resumes) then reads etcd a few times, not a
// thousand. A run that started or ended meanwhile changed the membership
// (its node joined, left or registered again), so it is never missed.
const runsCacheFor = time.Second

// historyRuns returns the node runs, from the cache when it is recent and
// the membership is the one it was read under.
func (c *Client) historyRuns(ctx context.Context) ([]discovery.HistoryRun, error) {
	rev := c.Nodes().Revision
	c.runsMu.Lock()
	defer c.runsMu.Unlock()
	if c.runsAt.IsZero() || time.Since(c.runsAt) > runsCacheFor || c.runsRev != rev {
		runs, err := c.reg.HistoryRuns(ctx)
		if err != nil {
			return nil, err
		}
		c.runs, c.runsAt, c.runsRev = runs, time.Now(), rev
	}
	return c.runs, nil
}
