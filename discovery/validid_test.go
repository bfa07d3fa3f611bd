package discovery_test

import (
	"math/rand/v2"
	"regexp"
	"strings"
	"testing"

	"github.com/pubmesh/pubmesh/discovery"
)

// The documented rule for ids, as a regexp: ValidID must agree with it.
var idRule = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$`)

func TestValidID(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		id string
		ok bool
	}{
		{"a", true}, {"node-1", true}, {"A1.b_c:d-e", true}, {"9", true},
		{strings.Repeat("x", 128), true}, {strings.Repeat("x", 129), false},
		{"", false}, {".a", false}, {"-a", false}, {":a", false}, {"_a", false},
		{"a/b", false}, {"a b", false}, {"é", false}, {"a\x00", false}, {"a\n", false},
	} {
		if err := discovery.ValidID(tc.id); (err == nil) != tc.ok {
			t.Errorf("ValidID(%q) = %v, want ok %v", tc.id, err, tc.ok)
		}
	}
	// Random strings over the interesting alphabet agree with the rule.
	// Half of them from allowed characters only, so that the first
	// character and the length decide.
	const allowed, alphabet = "aZ09._:-", "aZ09._:-/ \x00é"
	r := rand.New(rand.NewPCG(1, 2))
	for n := range 20000 {
		from := alphabet
		if n%2 == 0 {
			from = allowed
		}
		b := make([]byte, r.IntN(131))
		for i := range b {
			b[i] = from[r.IntN(len(from))]
		}
		id := string(b)
		if got, want := discovery.ValidID(id) == nil, idRule.MatchString(id); got != want {
			t.Fatalf("ValidID(%q) ok = %v, the rule says %v", id, got, want)
		}
	}
}
