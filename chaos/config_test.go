package chaos

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os/exec"
	"slices"
	"strings"
	"time"

	"github.com/pubmesh/pubmesh/discovery"
)

// changeConfig is scenario 13: the cluster configuration changes many
// times under load, through `pubmesh config` as an operator would, with a
// bad document written behind its back and a rollback among them. Every
// part (the gateway, every fanout client, every node agent) must run each
// good revision within a second or so of its write, and nothing may be
// lost, duplicated or reordered: the generic accounting checks the
// messages, this event checks that no WebSocket connection closed and
// measures the propagation (recover: the slowest write to be applied
// everywhere).
func changeConfig(r *run) marks {
	m := marks{fault: time.Now()}
	steps := [][]string{
		// Lower than the WebSocket subscribers' subscriptions: they keep them.
		{"set", "gateway.max_subscriptions", "1"},
		{"set", "gateway.publish_rate", "5"},
		{"set", "node.output_buffer_limit", "32mb 8mb 30"},
		{"set", "node.maxmemory", "256mb"},
		// After the suite's own namespace (history on the load's channels).
		{"set", "namespaces[1]", "{match: 'other.**', allow_publish: none, history_size: 10}"},
		{"garbage"},
		// The operator restores a good revision over the garbage (a set
		// would build on it and drop the history namespace).
		{"rollback", "FIRST"},
		{"set", "gateway.send_queue", "512"},
		{"set", "gateway.max_subscriptions", "1000"},
	}
	var first int64
	var lags []time.Duration
	for _, st := range steps {
		if st[0] == "garbage" {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			if _, err := r.c.cli.Put(ctx, "/pubmesh/"+r.c.name+"/config", `{"gateway":{"send_queue":"garbage"}}`); err != nil {
				r.t.Fatal(err)
			}
			cancel()
			time.Sleep(300 * time.Millisecond)
			continue
		}
		if st[0] == "rollback" {
			st = []string{"rollback", fmt.Sprint(first)}
			// A rollback builds on the garbage: apply-like, it replaces it.
		}
		args := append(append([]string{"config"}, st...), "--etcd", r.c.eps, "--cluster", r.c.name, "--author", "chaos")
		at := time.Now()
		out, err := exec.Command(pubmeshBin, args...).CombinedOutput()
		if err != nil {
			r.t.Fatalf("pubmesh %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		var rev int64
		for _, line := range strings.Split(string(out), "\n") {
			if _, err := fmt.Sscanf(line, "revision %d written", &rev); err == nil {
				break
			}
		}
		if rev == 0 {
			r.t.Fatalf("pubmesh %s wrote no revision:\n%s", strings.Join(args, " "), out)
		}
		if first == 0 {
			first = rev
		}
		lags = append(lags, r.waitConfig(rev).Sub(at))
	}
	m.end = time.Now()
	for _, rc := range r.wss {
		if c := rc.closedAfter(m.fault); !c.IsZero() {
			r.t.Errorf("a WebSocket subscriber's connection closed %s after the first change", c.Sub(m.fault).Round(time.Millisecond))
		}
	}
	if bad := r.gw.metric("pubmesh_config_invalid_total"); bad != 1 {
		r.t.Errorf("the gateway counted %v bad revisions, want 1", bad)
	}
	slices.Sort(lags)
	// The table's columns: detect is the median propagation, recover the
	// slowest.
	m.detect = m.fault.Add(lags[len(lags)/2])
	m.recover = m.end.Add(lags[len(lags)-1])
	m.note = fmt.Sprintf("%d writes with pubmesh config (gateway limits, node limits, a namespace, a rollback) and one bad document put with the etcd client; "+
		"each applied by the gateway, every fanout client and every node agent in %s (median, the detect column) to %s (slowest, the recover column), counted from the command's start; "+
		"no WebSocket connection closed", len(lags), lags[len(lags)/2].Round(time.Millisecond), lags[len(lags)-1].Round(time.Millisecond))
	return m
}

// waitConfig waits until every part runs revision rev (or a later one):
// the gateway (/api/config), every registered fanout client and every node
// agent (their etcd values), and returns when they all did.
func (r *run) waitConfig(rev int64) time.Time {
	r.t.Helper()
	return waitUntil(r.t, within, fmt.Sprintf("every part to run config revision %d", rev), func() bool {
		if r.gw.configRevision() < rev {
			return false
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		clients, err := r.c.reg.Clients(ctx)
		if err != nil || len(clients) == 0 {
			return false
		}
		for _, ci := range clients {
			if ci.ConfigRevision < rev {
				return false
			}
		}
		nodes, _, err := r.c.reg.List(ctx)
		if err != nil || len(nodes) != len(r.nodes) {
			return false
		}
		return !slices.ContainsFunc(nodes, func(n discovery.Node) bool { return n.ConfigRevision < rev })
	})
}

// configRevision is the revision the gateway's /api/config reports, or -1.
func (g *gateway) configRevision() int64 {
	cl := http.Client{Timeout: time.Second}
	resp, err := cl.Get("http://" + g.addr + "/api/config")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	var v struct {
		Revision int64 `json:"revision"`
	}
	if resp.StatusCode != http.StatusOK || json.NewDecoder(resp.Body).Decode(&v) != nil {
		return -1
	}
	return v.Revision
}
