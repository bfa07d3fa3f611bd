package main

// The one-line usage of the commands built into pubmesh-dev, shared by
// their definitions (dev.go, bench.go) and by pubmesh's hand-over to
// pubmesh-dev (devtools.go).
const (
	devUsage   = "run a whole local cluster in one process: an embedded etcd and N nodes"
	benchUsage = "benchmark pubmesh against plain Redis and Redis Cluster, side by side, in one run"
)
