// Package multihost proves pubmesh across machines: its test builds
// separate "hosts" as Linux network namespaces (internal/netns.NewHost),
// each with its own private address and all routed to each other through
// the host, and runs every component as a real process inside its own
// host: three etcd members (client and peer TLS with client
// certificates), three `pubmesh node` agents (TLS with client
// certificates, a Redis password), two `pubmesh gateway`s (HTTPS/WSS, an
// API key), a publishing service and subscribers (fanout subscribers and
// WebSocket clients that resume from history, spread over both gateways as
// a balancer would). Every certificate names its host's address only.
//
// Under load it restarts a gateway host's gateway (kill -9, then started
// again), drains a node host (`pubmesh drain`, then the node starts
// again), and cuts a node host off (its link down, then up), and counts
// every message per subscriber as the fault suite (package chaos) does:
// lost, duplicated, out of order, per fault; a WebSocket resume answered
// recovered:false is counted, never a silent gap.
//
// One node binds 0.0.0.0 without --advertise and one gateway listens on
// 0.0.0.0: the test checks that both register an address the other hosts
// can dial (internal/hostaddr).
//
// `go test ./multihost` (part of `make test`) runs the short form;
// PUBMESH_MULTIHOST=full (`make multihost`) publishes longer and cuts the
// host off for longer. Without network namespaces (not root, no iproute2)
// the test is skipped with the reason.
package multihost
