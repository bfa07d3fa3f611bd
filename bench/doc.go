// Package bench measures pubmesh against its peers in one run, on one
// machine, with one workload: plain go-redis on one redis-server, Redis
// Cluster with PUBLISH and with SPUBLISH, the fanout client over
// independent nodes (Replicas 1 and 2), and the WebSocket gateway. It is
// what `pubmesh bench` and `make bench` run; docs/benchmarks.md shows the
// latest results.
//
//	rep, err := bench.Run(ctx, bench.Config{OutDir: "bench/results", Progress: os.Stderr})
//	rep.Markdown(os.Stdout)
//
// Run starts every server it needs on free loopback ports (redis-servers
// through internal/testredis, the cluster with `redis-cli --cluster
// create`, an embedded etcd, the gateway on an in-process listener), and
// kills each redis-server by PID when its measurement ends; the report
// says how many it started and lists any still alive (none, normally).
//
// How a measurement works. Config.Subscribers subscribers subscribe to
// every one of Config.Channels channels and confirm it; then publishers
// send for Config.Duration, round-robin over the channels, at the offered
// rate or as fast as the target accepts. Each payload carries its publish
// time (see payload.go); subscribers record the end-to-end latency in a
// log-linear histogram (1.6% resolution). Publishers pause while more than
// Config.MaxBacklog messages per subscriber are published but not yet
// delivered, so a max-rate run measures sustained delivery, not how fast
// Redis output buffers fill. After publishing, the run waits until every
// expected delivery arrived or the count stayed still for Config.Settle;
// the rest is lost. Redis CPU is INFO cpu (used_cpu_sys + used_cpu_user)
// summed over the target's servers before and after; client CPU is
// getrusage of this process, which runs the publishers, the subscribers,
// the gateway and the embedded etcd.
//
// Concurrency: Run may be called from one goroutine at a time per Config;
// runs share nothing, so two can run at once (they compete for CPU).
package bench
