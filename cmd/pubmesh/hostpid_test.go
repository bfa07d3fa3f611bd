package main

import (
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/pubmesh/pubmesh/discovery"
)

// CLI and gateway client ids come from hostPID. In containers every process
// is PID 1 on a host name that may repeat, so "host:pid" alone collides:
// each call must add randomness, and stay a valid client id.
func TestHostPIDIsUnique(t *testing.T) {
	t.Parallel()
	h, _ := os.Hostname()
	prefix := fmt.Sprintf("%s:%d:", h, os.Getpid())
	seen := map[string]bool{}
	for range 100 {
		id := hostPID()
		if !strings.HasPrefix(id, prefix) || len(id) <= len(prefix) {
			t.Fatalf("hostPID() = %q, want %q and a random suffix", id, prefix)
		}
		if seen[id] {
			t.Fatalf("hostPID() returned %q twice", id)
		}
		seen[id] = true
		for _, use := range []string{"gateway-" + id, "cli-" + id} {
			if err := discovery.ValidID(use); err != nil {
				t.Fatalf("client id %q: %v", use, err)
			}
		}
	}
}
