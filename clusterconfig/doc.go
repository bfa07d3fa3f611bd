// Package clusterconfig is the live configuration of a pubmesh cluster: one
// document, stored as JSON in etcd at <prefix>/<cluster>/config, that every
// gateway, fanout client and node agent watches and applies without a
// restart.
//
// The document holds channel namespaces (ordered rules matched by glob, the
// first match wins, with an implicit default rule last), the gateway limits
// and the node limits. It holds no secret: JWT keys, API keys and TLS keys
// stay in flags, files and environment variables.
//
// This package is pure: it parses, validates, defaults, matches and diffs
// documents. Storing them with compare-and-swap, their history and the
// watch live in package discovery; the pubmesh config command edits them.
//
// Every key has a default (see Defaults and docs/operations.md), and a key
// left out takes it, so a document with only namespaces is valid. Parse
// reports every problem of a document at once, each with its field path,
// its value and why it is refused.
package clusterconfig
