package clusterconfig

import (
	"encoding/json"
	"fmt"
	"sort"
	"strings"
)

// Change is one key whose effective value differs between two documents.
type Change struct {
	Path     string
	Old, New string // JSON; "" when the key does not exist on that side
}

func (c Change) String() string {
	switch {
	case c.Old == "":
		return fmt.Sprintf("+ %s: %s", c.Path, c.New)
	case c.New == "":
		return fmt.Sprintf("- %s: %s", c.Path, c.Old)
	}
	return fmt.Sprintf("~ %s: %s -> %s", c.Path, c.Old, c.New)
}

// Diff lists the effective values (defaults included) that differ from a to
// b, in path order. A nil document is the defaults.
func Diff(a, b *Document) []Change {
	if a == nil {
		a = Defaults()
	}
	if b == nil {
		b = Defaults()
	}
	fa, fb := flatten(a), flatten(b)
	var out []Change
	for p, v := range fa {
		if w, ok := fb[p]; !ok || w != v {
			out = append(out, Change{Path: p, Old: v, New: fb[p]})
		}
	}
	for p, w := range fb {
		if _, ok := fa[p]; !ok {
			out = append(out, Change{Path: p, New: w})
		}
	}
	sort.Slice(out, func(i, j int) bool { return pathLess(out[i].Path, out[j].Path) })
	return out
}

// Summary is a one-line account of changes, one item per key, except that
// the keys of one namespace count as one item ("namespaces[0] (8 keys)"):
// at most max items, then "and N more".
func Summary(changes []Change, max int) string {
	if len(changes) == 0 {
		return "no change"
	}
	var items []string
	count := map[string]int{}
	for _, c := range changes {
		item := c.Path
		if strings.HasPrefix(item, "namespaces[") {
			if i := strings.IndexByte(item, ']'); i > 0 {
				item = item[:i+1]
			}
		}
		if count[item] == 0 {
			items = append(items, item)
		}
		count[item]++
	}
	var out []string
	for i, item := range items {
		if i == max {
			out = append(out, fmt.Sprintf("and %d more", len(items)-max))
			break
		}
		if n := count[item]; n > 1 {
			item = fmt.Sprintf("%s (%d keys)", item, n)
		}
		out = append(out, item)
	}
	return strings.Join(out, ", ")
}

// flatten maps every leaf of the document's JSON to its path.
func flatten(d *Document) map[string]string {
	var tree any
	_ = json.Unmarshal(d.JSON(), &tree)
	out := map[string]string{}
	var walk func(string, any)
	walk = func(p string, v any) {
		switch x := v.(type) {
		case map[string]any:
			for k, c := range x {
				walk(join(p, k), c)
			}
		case []any:
			for i, c := range x {
				walk(fmt.Sprintf("%s[%d]", p, i), c)
			}
		default:
			b, _ := json.Marshal(x)
			out[p] = string(b)
		}
	}
	walk("", tree)
	return out
}

// pathLess orders paths with list indexes numerically.
func pathLess(a, b string) bool {
	var ia, ib int
	pa, pb := a, b
	if i := strings.IndexByte(a, '['); i >= 0 && strings.HasPrefix(b, a[:i+1]) {
		fmt.Sscanf(a[i+1:], "%d", &ia)
		fmt.Sscanf(b[i+1:], "%d", &ib)
		if ia != ib {
			return ia < ib
		}
		pa, pb = a[i:], b[i:]
	}
	return pa < pb
}
