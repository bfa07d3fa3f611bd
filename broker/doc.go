// Package broker is the pubmesh node agent: it runs one node of the pub/sub
// tier and keeps its entry in the registry (package discovery) true.
//
// An Agent starts a redis-server child (no persistence, protected mode on
// loopback, a bounded pub/sub output buffer; see Config), or with
// Config.Attach only watches a Redis that runs elsewhere. Its life in the
// registry:
//
//	start ──PING ok──▶ joining ──JoinGate──▶ ready ──drain──▶ draining ──DrainGate──▶ gone
//	                      │                    │
//	                      └──── HealthFailures PINGs missed, child exited, ────┘──▶ gone ──PING ok──▶ joining
//	                            lease lost, key deleted by hand
//
// The node registers as joining only once its Redis answers PING, and turns
// ready when JoinGate returns (by default the join handshake, JoinHandshake). Every
// HealthInterval the agent PINGs Redis with a timeout, so a hung server
// (SIGSTOP) counts like a dead one; after HealthFailures misses in a row the
// node leaves by deleting its key (revoking its lease), and registers again
// as joining when PING works. If the child exits, the node leaves at once
// and the child is restarted with exponential backoff. If the lease is lost
// (etcd unreachable for longer than LeaseTTL), or the key is deleted by hand
// while the lease lives, the node registers again as soon as etcd answers.
// At start the agent waits for etcd (logging what it waits for) rather than
// fail.
//
// A drain, requested through the registry (discovery.Registry.RequestDrain)
// or by Shutdown, turns the node draining, runs DrainGate bounded by
// DrainTimeout, hands the node's history streams off to the other ready
// nodes (bounded by DrainTimeout again; see handoff.go), revokes the lease,
// clears the request, deletes the acks about the node and stops the child. A drain request is for one
// registration (incarnation) of the node id: one left from an earlier agent
// with the same id never drains a new one.
//
// From start to stop the agent follows the cluster configuration in etcd
// (discovery.Registry.WatchConfig) and applies its node section
// (output_buffer_limit, maxmemory) to the Redis with CONFIG SET within a
// second of a change, with no restart; the node's registration records the
// revision applied (Node.ConfigRevision). Config.OutputBufferLimit and
// Config.MaxMemory, when set, override it. See clusterconfig.go. The Redis
// runs maxmemory-policy volatile-ttl: a full node evicts the history streams
// closest to their expiry first.
//
// Each Redis run the agent registers is recorded in etcd
// (discovery.Registry.RecordRun) before clients can publish to it, and
// ended when its history goes away with it (the child exits or is stopped,
// or the next agent of the node id finds it open after a crash) or once a
// drain handed it off; see historyruns.go and docs/history.md.
//
// Security (see docs/security.md): with Config.Password the child requires
// it (redis.conf holds only its hash), with Config.Username as a
// pub/sub and history ACL user (and a second user, pubmesh-agent, that may
// only CONFIG SET and read the history streams for a hand-off, whose random
// password only the agent knows); with Config.TLSCertFile it serves TLS only and the
// node is registered with tls. The agent's own health checks and drain
// handshake authenticate and speak TLS too. A non-loopback Bind without a
// password is refused unless Config.Insecure.
//
// Run is the root of the agent's goroutines, and the goroutine that calls
// it is the only one that starts, stops or restarts the child. The child
// dies with the agent (Pdeathsig), and when Run returns it has stopped.
// The other methods of Agent are safe for concurrent use.
package broker
