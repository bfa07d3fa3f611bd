// Package chaos is pubmesh's fault and bad-input suite. It has no API: its
// tests start a real cluster (a 3-member etcd cluster, `pubmesh node`
// agents with real redis-servers, a `pubmesh gateway`), publish at a fixed
// rate, count every message per subscriber (fanout clients and WebSocket
// clients), inject one fault per scenario and check what the brief
// promises (../../shared/BRIEF.md, "Semantics we promise"):
//
//  1. a node joins; 2. a node drains; 3. redis-server kill -9;
//  4. redis-server SIGSTOP, then SIGCONT; 5. node agent kill -9 while its
//     Redis lives on (lease expiry); 6. etcd loses quorum, then regains it;
//  7. one etcd member restarted; 8. a node cut off by a network partition
//     (its Redis in a network namespace, the veth link down, then up);
//  9. the gateway restarted under 1000 WebSocket clients that reconnect with
//     backoff and jitter; 10. a rolling restart of every node.
//
// Scenarios 3, 4, 5 and 8 also run with Replicas: 2. The suite prints a
// table (published, delivered, lost, duplicated, out of order, time to
// detect, time to recover) and, in full mode, writes it to
// docs/reliability.md.
//
// `go test ./chaos` runs the short version of every scenario (part of
// `make test`); PUBMESH_CHAOS=full (`make chaos`) runs the full version,
// the 10 000-connection gateway test and the 5-minute soak. The bad-input
// tests (every entry point: WebSocket frames, HTTP, tokens, etcd values, a
// Redis that speaks something else) run in both modes.
//
// Network namespaces need root; where they cannot be made, scenario 8 is
// skipped with the reason.
package chaos
