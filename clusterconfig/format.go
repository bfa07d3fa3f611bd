package clusterconfig

import (
	"bytes"
	"errors"

	"gopkg.in/yaml.v3"
)

// YAML renders a stored document (JSON, as etcd holds it) as the YAML
// `pubmesh config get` prints and the gateway's admin page edits: keys as
// written, no defaults filled in. Empty or nil raw is "{}". Raw that does
// not decode is returned as it is, so it can still be shown and replaced.
func YAML(raw []byte) []byte {
	if len(bytes.TrimSpace(raw)) == 0 {
		return []byte("{}\n")
	}
	tree, err := Decode(raw)
	if err != nil {
		return raw
	}
	if len(tree) == 0 {
		return []byte("{}\n")
	}
	var b bytes.Buffer
	enc := yaml.NewEncoder(&b)
	enc.SetIndent(2)
	if err := enc.Encode(tree); err != nil {
		return raw
	}
	enc.Close()
	return b.Bytes()
}

// ProblemList is a refused document's problems, one line each
// (Problem.String), or the error itself when it is not a
// *ValidationError.
func ProblemList(err error) []string {
	var ve *ValidationError
	if !errors.As(err, &ve) {
		return []string{err.Error()}
	}
	out := make([]string, len(ve.Problems))
	for i, p := range ve.Problems {
		out[i] = p.String()
	}
	return out
}
