// Package version holds the pubmesh release version, reported by the CLI and
// recorded in every node's registry value.
package version

// Version of pubmesh.
const Version = "0.1.0"
