// Package ws is pubmesh's gateway: it serves browsers and apps over
// WebSocket, Server-Sent Events and HTTP streaming, and backends over HTTP,
// on top of one fanout client.
//
//	client, _ := fanout.New(ctx, fanout.Config{Etcd: etcdCfg, Overflow: fanout.Block, Registerer: reg})
//	h, err := ws.NewHandler(client, ws.Config{JWTSecret: secret, Metrics: reg})
//	...
//	err = h.Serve(ctx, listener) // or ws.ListenAndServe(ctx, addr, client, cfg)
//
// Clients speak JSON text frames at GET /ws (subscribe, unsubscribe,
// publish, ping, history; replies ok, error and history; message frames);
// backends POST JSON to /api/publish/{channel}. docs/protocol.md describes
// frames, error and close codes, limits and their defaults, and
// authentication (JWT with subscribe/publish channel globs, or API keys).
//
// History: on a channel whose namespace keeps history (docs/history.md)
// every message frame carries its position (pos), a subscribe with since
// resumes from one (the ok says recovered and count, the messages from
// history follow, then live ones, with no gap and no duplicate at the
// junction: resume.go), and the history op and GET /api/history/{channel}
// read history.
//
// Configuration: the limits and the channel namespaces' rules come from
// the cluster configuration in etcd, which the fanout client watches; the
// handler applies each new revision within a second, to the next
// subscribe, publish or connection, without closing anything. Config
// fields that are set override the cluster's values for this gateway.
// A namespace that allows anonymous clients lets clients without a
// credential connect (see Handler and docs/protocol.md).
//
// Structure: a session (session.go) is one client of any transport: its
// principal, subscriptions, resume holds and bounded outbound queue. The
// operations (ops.go, pattern.go, refresh.go, history.go) run on sessions,
// each in one order for every transport: validate, authorize, rate-limit,
// call fanout. The hub (hub.go) fans out to sessions. Each transport only
// translates frames: transport_ws.go (WebSocket), transport_sse.go (SSE,
// GET /sse), transport_stream.go (their shared stream writer, and NDJSON
// at GET /api/stream/{channel}).
//
// Efficiency: the gateway holds one fanout subscription per channel,
// however many clients want it (reference counted), encodes each message
// once and queues the same bytes to every subscriber, and writes a
// client's queued frames with one syscall. Each connection has a bounded
// send queue (SendQueue, 256 frames): a client that cannot keep up is
// closed with 4008 "slow consumer" and counted, and never delays the
// others. The pumps never wait, so the fanout client should use
// Overflow: fanout.Block: a burst the gateway's CPU cannot absorb at once
// then backs up into Redis instead of being dropped at the fanout buffer.
//
// Concurrency: Handler is safe for concurrent use. Each connection has one
// reader and one writer goroutine; the hub's per-channel pump goroutines
// never block on a connection. Shutdown is idempotent and safe to call
// concurrently with connections opening and closing.
package ws
