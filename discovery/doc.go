// Package discovery is pubmesh's registry of live Redis nodes in etcd.
//
// A node agent registers its node under a lease (Registry.Register) and
// reports its state as it changes: joining, then ready, then draining; a node
// that is gone has no key, and a crashed agent's key disappears by itself when
// its lease expires. Consumers (the fanout client, the gateway, the CLI) call
// Registry.Watch and receive a complete Snapshot of the live nodes on every
// change, which stays available, marked Stale, while etcd is unreachable.
//
// Key layout, under "/pubmesh/<cluster>/":
//
//	nodes/<node-id>            Node as JSON, under the agent's lease (TTL 5s)
//	drain/<node-id>            a drain request for that node's agent
//	clients/<client-id>        a fanout client's presence, under its lease
//	acks/<node-id>/<client-id> a client's acknowledgement of a node's state
//
// Registry, Registration and the channels they return are safe for concurrent
// use. A Watch channel is owned and closed by the goroutine that feeds it,
// when the caller's context is done.
package discovery
