package fanout

import (
	"context"
	"sort"
	"strings"
	"sync"
)

// NodeServerInfo is what one node's redis-server reports in INFO, read by
// the client over its own connections to the node (its credentials and
// TLS), for the gateway's admin page.
type NodeServerInfo struct {
	ID string `json:"id"`
	// Fields are the INFO fields asked for, as the server wrote them
	// (redis_version, used_memory_human, maxmemory, connected_clients...).
	Fields map[string]string `json:"fields,omitempty"`
	// Error is why the node did not answer, if it did not.
	Error string `json:"error,omitempty"`
}

// NodeServerInfo runs INFO with sections (such as "server", "memory",
// "clients") on every node the client is connected to, in parallel, and
// returns the fields named in keep (all of them when keep is empty), by
// node id. Each node is bounded by ctx.
func (c *Client) NodeServerInfo(ctx context.Context, sections []string, keep []string) []NodeServerInfo {
	conns := c.conns()
	out := make([]NodeServerInfo, len(conns))
	var wg sync.WaitGroup
	for i, nc := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out[i] = NodeServerInfo{ID: nc.node.ID}
			s, err := nc.rdb.Info(ctx, sections...).Result()
			if err != nil {
				out[i].Error = err.Error()
				return
			}
			out[i].Fields = parseInfo(s, keep)
		}()
	}
	wg.Wait()
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// parseInfo reads INFO's "key:value" lines, keeping the keys in keep (all
// when keep is empty).
func parseInfo(s string, keep []string) map[string]string {
	want := make(map[string]bool, len(keep))
	for _, k := range keep {
		want[k] = true
	}
	out := map[string]string{}
	for _, line := range strings.Split(s, "\n") {
		line = strings.TrimRight(line, "\r")
		if line == "" || line[0] == '#' {
			continue
		}
		k, v, ok := strings.Cut(line, ":")
		if ok && (len(want) == 0 || want[k]) {
			out[k] = v
		}
	}
	return out
}
