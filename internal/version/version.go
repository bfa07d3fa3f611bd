// Package version holds the pubmesh release version, reported by the CLI and
// recorded in every node's registry value.
package version

import (
	"runtime"
	"runtime/debug"
)

// Version of pubmesh.
const Version = "0.1.0"

// Commit is the source commit, set by `make dist` with
// -ldflags "-X github.com/pubmesh/pubmesh/internal/version.Commit=...". Empty in
// a plain `go build`, which records it in the build info instead (Build reads
// both).
var Commit = ""

// RedisMin is the oldest redis-server pubmesh runs on (pub/sub, streams with
// MAXLEN ~, ACL users and TLS as the nodes use them); RedisTested is the one
// the test suite runs against.
const (
	RedisMin    = "7.0"
	RedisTested = "7.0.15"
)

// BuildInfo is what `pubmesh version` prints.
type BuildInfo struct {
	Version     string `json:"version"`
	Commit      string `json:"commit"`   // "unknown" when neither ldflags nor the build info have it
	Modified    bool   `json:"modified"` // built from a tree with uncommitted changes
	Go          string `json:"go"`
	Platform    string `json:"platform"`
	RedisMin    string `json:"redis_min"`
	RedisTested string `json:"redis_tested"`
}

// Build returns the running binary's build information.
func Build() BuildInfo {
	b := BuildInfo{Version: Version, Commit: Commit, Go: runtime.Version(), Platform: runtime.GOOS + "/" + runtime.GOARCH,
		RedisMin: RedisMin, RedisTested: RedisTested}
	if info, ok := debug.ReadBuildInfo(); ok {
		for _, s := range info.Settings {
			switch s.Key {
			case "vcs.revision":
				if b.Commit == "" {
					b.Commit = s.Value
				}
			case "vcs.modified":
				b.Modified = s.Value == "true"
			}
		}
	}
	if b.Commit == "" {
		b.Commit = "unknown"
	}
	return b
}
