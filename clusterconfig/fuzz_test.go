package clusterconfig_test

import (
	"testing"

	"github.com/pubmesh/pubmesh/clusterconfig"
)

// FuzzParse: any input is either refused with problems or gives a document
// whose JSON parses back to the same document.
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"", "{}", `namespaces: [{match: "chat.*", history_size: 10}]`,
		`{"gateway":{"publish_rate":2.5,"ping_interval":"3s"},"node":{"maxmemory":"64mb"}}`,
		"node: {output_buffer_limit: '1mb 1kb 1'}", "[", "a: *b", "namespaces: [{match: '**.x.*'}]",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		d, err := clusterconfig.Parse(in)
		if err != nil {
			if d != nil {
				t.Fatal("a document with an error")
			}
			return
		}
		back, err := clusterconfig.Parse(d.JSON())
		if err != nil {
			t.Fatalf("the JSON of a valid document is refused: %v\n%s", err, d.JSON())
		}
		if diff := clusterconfig.Diff(d, back); len(diff) != 0 {
			t.Fatalf("round trip changed %v", diff)
		}
	})
}
