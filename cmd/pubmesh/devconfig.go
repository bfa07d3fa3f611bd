//go:build devtools

package main

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/pubmesh/pubmesh/clusterconfig"
	"github.com/pubmesh/pubmesh/discovery"
)

// devConfig is the cluster configuration `pubmesh dev` writes on an etcd
// that has none: every channel keeps history, so that the demo page
// recovers what was published while it was away (a gateway restart, a
// network blip), and has presence with join and leave events, so that the
// demo page shows who is on a channel, live. A real cluster turns these on
// per namespace.
const devConfig = `namespaces: [{match: "**", history_size: 1000, history_ttl: 10m, presence: true, join_leave: true}]`

// writeDevConfig writes devConfig unless the cluster has a configuration
// already (a --data-dir kept from an earlier run, changed with `pubmesh
// config`): compare-and-swap on "no configuration", so that one is never
// overwritten. It says which one the cluster runs.
func writeDevConfig(ctx context.Context, reg *discovery.Registry, out io.Writer) error {
	tree, err := clusterconfig.Decode([]byte(devConfig))
	if err != nil {
		return fmt.Errorf("dev configuration: %w", err)
	}
	rev, err := reg.PutConfig(ctx, tree, 0, discovery.ConfigChange{Author: "pubmesh dev", Comment: "pubmesh dev's default: history, presence and join/leave for every channel"})
	var conflict *discovery.ConflictError
	switch {
	case errors.As(err, &conflict):
		fmt.Fprintf(out, "config: the cluster's own, revision %d (`pubmesh config get` shows it)\n", conflict.Current)
		return nil
	case err != nil:
		return fmt.Errorf("write the dev configuration: %w", err)
	}
	fmt.Fprintf(out, "config: history on for every channel (namespace \"**\": history_size 1000, history_ttl 10m, presence: true, join_leave: true), revision %d; `pubmesh config` changes it\n", rev)
	return nil
}
