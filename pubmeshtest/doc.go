// Package pubmeshtest runs a real pubmesh cluster for tests, as
// net/http/httptest runs a real HTTP server: an etcd server inside the
// process and node agents (package broker), each supervising its own
// redis-server on a free loopback port. Nothing is faked: a test that
// passes against it passes against a production cluster.
//
// In a test:
//
//	cl := pubmeshtest.New(t, pubmeshtest.Options{Nodes: 2})
//	client, err := fanout.New(ctx, cl.FanoutConfig())
//
// Everything it starts is stopped when the test ends (or by Close, for
// Start's callers such as Example functions). It needs the redis-server
// binary on PATH (Debian's redis-server package; `make test` installs it).
//
// Concurrency: a Cluster is safe for concurrent use; AddNode may be called
// while clients run, to test a node joining.
package pubmeshtest
