package discovery_test

import (
	"encoding/json"
	"testing"

	"github.com/pubmesh/pubmesh/discovery"
)

// FuzzDecodeNode feeds arbitrary registry values to the decoder: it must
// never panic, and whatever it accepts must be a valid node under the key's
// id that survives a round trip.
func FuzzDecodeNode(f *testing.F) {
	f.Add("n1", `{"id":"n1","addr":"127.0.0.1:7001","state":"ready","started_at":"2026-11-22T06:00:00Z","version":"0.1.0"}`)
	f.Add("n1", `{"id":"n2","addr":"127.0.0.1:7001","state":"ready"}`)
	f.Add("x", `{not json`)
	f.Add("x", `{"id":"x","addr":"[::1]:1","state":"draining","tls":true,"run_id":"abc"}`)
	f.Add("x", `null`)
	f.Fuzz(func(t *testing.T, keyID, value string) {
		n, err := discovery.DecodeNode(keyID, []byte(value))
		if err != nil {
			return
		}
		if n.ID != keyID {
			t.Fatalf("accepted id %q under key %q", n.ID, keyID)
		}
		if err := n.Validate(); err != nil {
			t.Fatalf("accepted an invalid node: %v", err)
		}
		b, _ := json.Marshal(n)
		if _, err := discovery.DecodeNode(keyID, b); err != nil {
			t.Fatalf("re-encoded node rejected: %v", err)
		}
	})
}
