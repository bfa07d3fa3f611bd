package clusterconfig

import (
	"bytes"
	"encoding/json"
	"fmt"
	"reflect"
	"sort"
	"strings"

	"gopkg.in/yaml.v3"
)

// MaxDocumentBytes bounds a document: etcd's default request limit is
// 1.5 MiB, and a configuration is small.
const MaxDocumentBytes = 512 << 10

// Problem is one reason a document is refused.
type Problem struct {
	Path   string // "gateway.max_subscriptions", "namespaces[2].match"
	Value  any    // the value found, nil when missing
	Reason string
}

func (p Problem) String() string {
	if p.Value == nil {
		return p.Path + ": " + p.Reason
	}
	v, _ := json.Marshal(p.Value)
	return fmt.Sprintf("%s: %s: %s", p.Path, v, p.Reason)
}

// ValidationError lists every problem of a refused document.
type ValidationError struct{ Problems []Problem }

func (e *ValidationError) Error() string {
	lines := make([]string, len(e.Problems))
	for i, p := range e.Problems {
		lines[i] = "  " + p.String()
	}
	return fmt.Sprintf("clusterconfig: %d problem(s):\n%s", len(e.Problems), strings.Join(lines, "\n"))
}

// Parse reads a document written as YAML or JSON, fills in the defaults of
// the keys left out and validates it. An empty document is the defaults. A
// refused document returns a *ValidationError with every problem found.
func Parse(data []byte) (*Document, error) {
	tree, err := Decode(data)
	if err != nil {
		return nil, err
	}
	return FromTree(tree)
}

// Decode reads YAML or JSON into a generic tree (maps, lists, scalars)
// without checking it against the schema: the form the pubmesh config
// command edits and stores.
func Decode(data []byte) (map[string]any, error) {
	if len(data) > MaxDocumentBytes {
		return nil, &ValidationError{Problems: []Problem{{Path: "(document)", Reason: fmt.Sprintf("larger than %d bytes", MaxDocumentBytes)}}}
	}
	if len(bytes.TrimSpace(data)) == 0 {
		return map[string]any{}, nil
	}
	var v any
	if err := yaml.Unmarshal(data, &v); err != nil {
		return nil, &ValidationError{Problems: []Problem{{Path: "(document)", Reason: "not YAML or JSON: " + err.Error()}}}
	}
	if v == nil {
		return map[string]any{}, nil
	}
	m, ok := v.(map[string]any)
	if !ok {
		return nil, &ValidationError{Problems: []Problem{{Path: "(document)", Reason: "must be a mapping with keys namespaces, gateway and node"}}}
	}
	return m, nil
}

// FromTree checks a decoded tree against the schema, defaults and validates
// it.
func FromTree(tree map[string]any) (*Document, error) {
	d := Defaults()
	var probs []Problem
	decodeStruct("", tree, reflect.ValueOf(d).Elem(), &probs)
	d.validate(&probs)
	if len(probs) > 0 {
		return nil, &ValidationError{Problems: probs}
	}
	return d, nil
}

// valueDecoder is a type that reads itself from a tree value.
type valueDecoder interface{ decode(v any) error }

// secretish are keys people may try to put in the document: each is refused
// with a pointer to where secrets belong.
var secretish = []string{"secret", "password", "token", "api_key", "private", "tls_key"}

func decodeStruct(path string, src any, dst reflect.Value, probs *[]Problem) {
	m, ok := src.(map[string]any)
	if !ok {
		*probs = append(*probs, Problem{Path: pathOr(path), Value: src, Reason: "must be a mapping"})
		return
	}
	fields := map[string]int{}
	t := dst.Type()
	for i := 0; i < t.NumField(); i++ {
		if tag := strings.Split(t.Field(i).Tag.Get("json"), ",")[0]; tag != "" && tag != "-" {
			fields[tag] = i
		}
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		p := join(path, k)
		i, ok := fields[k]
		if !ok {
			reason := "unknown key"
			for _, s := range secretish {
				if strings.Contains(strings.ToLower(k), s) {
					reason = "unknown key: secrets never go in the cluster configuration (use flags, files or environment variables)"
				}
			}
			*probs = append(*probs, Problem{Path: p, Reason: reason})
			continue
		}
		decodeValue(p, m[k], dst.Field(i), probs)
	}
}

func decodeValue(path string, src any, dst reflect.Value, probs *[]Problem) {
	bad := func(reason string) { *probs = append(*probs, Problem{Path: path, Value: src, Reason: reason}) }
	if src == nil {
		bad("must not be null (leave the key out for its default)")
		return
	}
	if d, ok := dst.Addr().Interface().(valueDecoder); ok {
		if err := d.decode(src); err != nil {
			bad(err.Error())
		}
		return
	}
	switch dst.Kind() {
	case reflect.Struct:
		decodeStruct(path, src, dst, probs)
	case reflect.Slice: // namespaces
		list, ok := src.([]any)
		if !ok {
			bad("must be a list")
			return
		}
		out := reflect.MakeSlice(dst.Type(), len(list), len(list))
		for i, item := range list {
			elem := out.Index(i)
			elem.Set(reflect.ValueOf(DefaultNamespace))
			elem.FieldByName("Match").SetString("")
			decodeStruct(fmt.Sprintf("%s[%d]", path, i), item, elem, probs)
		}
		dst.Set(out)
	case reflect.Int:
		n, ok := integer(src)
		if !ok {
			bad("must be a whole number")
			return
		}
		dst.SetInt(n)
	case reflect.Float64:
		switch x := src.(type) {
		case float64:
			dst.SetFloat(x)
		default:
			n, ok := integer(src)
			if !ok {
				bad("must be a number")
				return
			}
			dst.SetFloat(float64(n))
		}
	case reflect.Bool:
		b, ok := src.(bool)
		if !ok {
			bad("must be true or false")
			return
		}
		dst.SetBool(b)
	case reflect.String:
		s, ok := src.(string)
		if !ok {
			bad("must be a string")
			return
		}
		dst.SetString(s)
	default:
		panic("clusterconfig: no decoder for " + dst.Type().String())
	}
}

func join(path, k string) string {
	if path == "" {
		return k
	}
	return path + "." + k
}

func pathOr(p string) string {
	if p == "" {
		return "(document)"
	}
	return p
}
