// Command member is an etcd member for internal/etcdcluster
// (Config.Exe): a binary of its own, so that tests built with the race
// detector can run their etcd members without it.
package main

import (
	"fmt"
	"os"

	"github.com/pubmesh/pubmesh/internal/etcdcluster"
)

func main() {
	etcdcluster.Main() // runs the member and exits when started by a Cluster
	fmt.Fprintln(os.Stderr, "member: run by internal/etcdcluster only")
	os.Exit(2)
}
