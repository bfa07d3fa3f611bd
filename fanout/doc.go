// Package fanout is the client that every service instance embeds to use a
// pubmesh cluster: independent Redis nodes registered in etcd.
//
// A Client watches the cluster's nodes in etcd, keeps a connection to every
// live node, subscribes every channel and pattern on all of them, and
// publishes each message to exactly one node: the channel's home, chosen by
// rendezvous hashing over the ready nodes (two nodes with Replicas: 2). So
// each subscriber receives every message, and each message costs one node's
// work however many nodes there are.
//
//	c, err := fanout.New(ctx, fanout.Config{Etcd: discovery.EtcdConfig{Endpoints: eps}})
//	sub, err := c.Subscribe(ctx, "orders.eu")
//	err = c.Publish(ctx, "orders.eu", []byte("hello"))
//	for m := range sub.Messages() { ... }
//
// Publish returns once a node accepted the message. PublishAsync returns
// at once with a *PublishResult, and Flush waits for every publish queued
// before it: one goroutine then fills the nodes' pipelines as many calling
// Publish would, with the same retries and the same order per channel, and
// at most Config.MaxPendingPublishBytes outstanding.
//
// Semantics:
//   - A subscriber receives each message published after Subscribe returned
//     once: message ids (the envelope) drop duplicates within
//     Config.DedupWindow.
//   - Messages of one publisher on one channel arrive in publish order;
//     while the home node of a channel moves, a message that overtakes its
//     predecessor is held up to Config.ReorderWindow.
//   - Joins and drains lose nothing: the client acks a joining node only
//     once subscribed there (the node takes publishes only after every
//     client acked), and acks a draining node once nothing is in flight to
//     it (the node leaves only after every client acked).
//   - A node crash loses what was in flight on it; with Replicas: 2, nothing.
//   - A client cut off from etcd but not from Redis for LeaseTTL may miss
//     the messages of nodes that join meanwhile (its lease expires, so the
//     join handshake stops waiting for it). It says so: every Subscription
//     gets a Gap on Gaps() when this opens and another when the client has
//     re-synced (subscribed on every node again), Client.Health reports
//     Stale, and pubmesh_fanout_membership_stale is 1 meanwhile.
//   - Subscription.Close returns at once: each node's UNSUBSCRIBE is queued
//     in order with that node's other commands, never shares a deadline
//     with another node, and is skipped if a newer Subscribe took the name
//     again. Client.Close sends no UNSUBSCRIBE (it closes the connections).
//   - Each Subscription's buffer is bounded (Config.SubscriptionBuffer); on
//     overflow the oldest message is dropped and counted (DropOldest), or
//     delivery waits (Block).
//
// Health: Client.Health reports, per registered node, whether the client
// is subscribed there and can publish there (a registry entry that points
// nowhere counts for nothing), and whether membership is stale; a gateway's
// /healthz is built on it. New waits for etcd, retrying with backoff, until
// its context ends.
//
// Security: Config.Username and Password authenticate the client to every
// node, and nodes registered with tls are dialled with TLS (Config.TLS). A
// node that refuses the client (wrong password, missing permission, an
// untrusted or expired certificate) never makes a call hang: Subscribe
// returns its *NodeError, Publish tries the other ready nodes and returns
// ErrNoNodes wrapping the *NodeError when none took the message, and the
// refusal is logged once per node connection and counted in
// pubmesh_fanout_node_refusals_total. See docs/security.md.
//
// The subscription connection to each node is the client's own (dial,
// AUTH, a check of the node's run, SUBSCRIBE, fences), read by a RESP
// reader that costs no allocation per message but the message kept by the
// subscribers; every other command goes through go-redis.
//
// Client and Subscription are safe for concurrent use. Close on either can
// be called twice; later calls return ErrClosed. See docs/wire-format.md for
// what travels over Redis.
package fanout
