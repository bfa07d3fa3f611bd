package clusterconfig

import (
	"encoding/json"
	"fmt"
	"regexp"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// Encode returns the stored form of a tree: compact JSON with sorted keys.
// It holds what people wrote, not the defaults, so a default that changes
// in a later release reaches the keys they left out.
func Encode(tree map[string]any) ([]byte, error) {
	b, err := json.Marshal(tree)
	if err != nil {
		return nil, fmt.Errorf("clusterconfig: encode: %w", err)
	}
	return b, nil
}

var indexed = regexp.MustCompile(`^([a-z_]+)\[(\d+)\]$`)

// splitPath turns "namespaces[0].match" or "namespaces.0.match" into
// ["namespaces", 0, "match"].
func splitPath(path string) ([]any, error) {
	if path == "" {
		return nil, fmt.Errorf("empty path")
	}
	var out []any
	for _, s := range strings.Split(path, ".") {
		if m := indexed.FindStringSubmatch(s); m != nil {
			i, _ := strconv.Atoi(m[2])
			out = append(out, m[1], i)
			continue
		}
		if i, err := strconv.Atoi(s); err == nil && len(out) > 0 {
			out = append(out, i)
			continue
		}
		if s == "" {
			return nil, fmt.Errorf("path %q has an empty part", path)
		}
		out = append(out, s)
	}
	return out, nil
}

// ParseValue reads a value given on a command line as YAML: 500 is a
// number, true a boolean, 10s a string, [a, b] a list.
func ParseValue(s string) any {
	var v any
	if err := yaml.Unmarshal([]byte(s), &v); err != nil || v == nil {
		return s
	}
	return v
}

// Set stores value at path in tree, creating the mappings on the way;
// an index one past the end of a list appends. The tree is changed in
// place; check the result with FromTree.
func Set(tree map[string]any, path string, value any) error {
	parts, err := splitPath(path)
	if err != nil {
		return err
	}
	_, err = setIn(tree, parts, value, path, false)
	return err
}

// Unset removes the key or list item at path, so it takes its default.
func Unset(tree map[string]any, path string) error {
	parts, err := splitPath(path)
	if err != nil {
		return err
	}
	_, err = setIn(tree, parts, nil, path, true)
	return err
}

func setIn(node any, parts []any, value any, path string, remove bool) (any, error) {
	switch key := parts[0].(type) {
	case string:
		m, ok := node.(map[string]any)
		if node == nil {
			m, ok = map[string]any{}, true
		}
		if !ok {
			return nil, fmt.Errorf("%s: %q is not inside a mapping", path, key)
		}
		if len(parts) == 1 {
			if remove {
				if _, ok := m[key]; !ok {
					return nil, fmt.Errorf("%s: not set", path)
				}
				delete(m, key)
			} else {
				m[key] = value
			}
			return m, nil
		}
		child, err := setIn(m[key], parts[1:], value, path, remove)
		if err != nil {
			return nil, err
		}
		m[key] = child
		return m, nil
	case int:
		l, ok := node.([]any)
		if node == nil {
			ok = true
		}
		if !ok {
			return nil, fmt.Errorf("%s: [%d] is not inside a list", path, key)
		}
		if key > len(l) || (key == len(l) && remove) {
			return nil, fmt.Errorf("%s: index %d out of range (the list has %d)", path, key, len(l))
		}
		if len(parts) == 1 && remove {
			return append(l[:key:key], l[key+1:]...), nil
		}
		if key == len(l) {
			l = append(l, nil)
		}
		if len(parts) == 1 {
			l[key] = value
			return l, nil
		}
		child, err := setIn(l[key], parts[1:], value, path, remove)
		if err != nil {
			return nil, err
		}
		l[key] = child
		return l, nil
	}
	panic("unreachable")
}
