package pubmeshtest

import (
	"context"
	"testing"
	"time"

	"github.com/pubmesh/pubmesh/discovery"
)

// ApplyConfig writes doc (YAML or JSON) as the cluster configuration of
// reg's cluster, as `pubmesh config apply` does, and returns its revision;
// it fails the test if doc is refused. The cluster's processes run it
// within a second (fanout.Client.ClusterConfig shows when).
func ApplyConfig(t testing.TB, reg *discovery.Registry, doc string) int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rev, err := reg.ApplyConfig(ctx, []byte(doc), discovery.ConfigChange{Author: "test"})
	if err != nil {
		t.Fatalf("config %q: %v", doc, err)
	}
	return rev
}

// ApplyConfig writes doc as the cluster configuration; see the function
// ApplyConfig.
func (c *Cluster) ApplyConfig(t testing.TB, doc string) int64 { return ApplyConfig(t, c.reg, doc) }
