package ws

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"

	"github.com/pubmesh/pubmesh/clusterconfig"
	"github.com/pubmesh/pubmesh/discovery"
)

// The admin page's actions: the cluster configuration editor (the same
// validation, diff and compare-and-swap as pubmesh config) and drain (the
// same request as pubmesh drain).

// adminConfig is GET /admin/api/config.
type adminConfig struct {
	// Revision is the etcd revision of the document (0: none, the
	// defaults are in force): the one an apply must name.
	Revision int64  `json:"revision"`
	Document string `json:"document"` // YAML
	// Problems, when the stored document does not validate (written
	// behind pubmesh config's back); every process keeps its last good
	// revision meanwhile.
	Problems []string `json:"problems,omitempty"`
}

func (a *admin) serveConfig(w http.ResponseWriter, r *http.Request) {
	cur, err := a.h.client.Registry().Config(r.Context())
	if err != nil {
		writeJSON(w, http.StatusServiceUnavailable, adminError{Error: err.Error()})
		return
	}
	out := adminConfig{Revision: cur.Revision, Document: string(clusterconfig.YAML(cur.Raw))}
	if cur.Err != nil {
		out.Problems = clusterconfig.ProblemList(cur.Err)
	}
	writeJSON(w, http.StatusOK, out)
}

// adminConfigEdit is the body of preview and apply.
type adminConfigEdit struct {
	Document string `json:"document"` // YAML or JSON
	// Revision is the revision the edit started from: apply writes only
	// if the configuration is still at it.
	Revision int64  `json:"revision"`
	Comment  string `json:"comment,omitempty"`
}

// adminPreview is the answer to preview: the problems, or the changes in
// effect (defaults included) from the current revision.
type adminPreview struct {
	Valid    bool     `json:"valid"`
	Problems []string `json:"problems,omitempty"`
	Changes  []string `json:"changes"`
	// Current is the revision in etcd now; when it is not the edit's
	// Revision, an apply will be refused (Conflict).
	Current  int64 `json:"current_revision"`
	Conflict bool  `json:"conflict"`
}

// adminApplied is the answer to a successful apply.
type adminApplied struct {
	Revision int64    `json:"revision"`
	Previous int64    `json:"previous"`
	Changes  []string `json:"changes"`
}

func readEdit(r *http.Request) (adminConfigEdit, error) {
	var e adminConfigEdit
	b, err := io.ReadAll(io.LimitReader(r.Body, clusterconfig.MaxDocumentBytes+4<<10))
	if err != nil {
		return e, err
	}
	if err := json.Unmarshal(b, &e); err != nil {
		return e, errors.New("body is not the expected JSON object: " + err.Error())
	}
	return e, nil
}

// check decodes and validates an edit against the current configuration.
func (a *admin) check(ctx context.Context, e adminConfigEdit) (map[string]any, adminPreview, error) {
	p := adminPreview{Changes: []string{}}
	cur, err := a.h.client.Registry().Config(ctx)
	if err != nil {
		return nil, p, err
	}
	p.Current, p.Conflict = cur.Revision, cur.Revision != e.Revision
	tree, err := clusterconfig.Decode([]byte(e.Document))
	if err != nil {
		p.Problems = clusterconfig.ProblemList(err)
		return nil, p, nil
	}
	doc, err := clusterconfig.FromTree(tree)
	if err != nil {
		p.Problems = clusterconfig.ProblemList(err)
		return nil, p, nil
	}
	p.Valid = true
	for _, ch := range clusterconfig.Diff(cur.Doc, doc) {
		p.Changes = append(p.Changes, ch.String())
	}
	return tree, p, nil
}

func (a *admin) servePreview(w http.ResponseWriter, r *http.Request) {
	e, err := readEdit(r)
	if err != nil {
		a.done(r, "config_preview", "invalid", "err", err)
		writeJSON(w, http.StatusBadRequest, adminError{Error: err.Error()})
		return
	}
	_, p, err := a.check(r.Context(), e)
	if err != nil {
		a.done(r, "config_preview", "error", "err", err)
		writeJSON(w, http.StatusServiceUnavailable, adminError{Error: err.Error()})
		return
	}
	result := "ok"
	if !p.Valid {
		result = "invalid"
	}
	a.done(r, "config_preview", result, "revision", e.Revision, "changes", len(p.Changes), "problems", len(p.Problems))
	writeJSON(w, http.StatusOK, p)
}

// serveApply writes the edit if the configuration is still at the
// revision the user started from (discovery.Registry.PutConfig, as
// pubmesh config does), recorded in the history with the author
// "admin@<gateway id>".
func (a *admin) serveApply(w http.ResponseWriter, r *http.Request) {
	e, err := readEdit(r)
	if err != nil {
		a.done(r, "config_apply", "invalid", "err", err)
		writeJSON(w, http.StatusBadRequest, adminError{Error: err.Error()})
		return
	}
	tree, p, err := a.check(r.Context(), e)
	if err != nil {
		a.done(r, "config_apply", "error", "err", err)
		writeJSON(w, http.StatusServiceUnavailable, adminError{Error: err.Error()})
		return
	}
	if !p.Valid {
		a.done(r, "config_apply", "invalid", "problems", strings.Join(p.Problems, "; "))
		writeJSON(w, http.StatusUnprocessableEntity, adminError{Error: "the document is not valid: nothing was written", Problems: p.Problems})
		return
	}
	rev, err := a.h.client.Registry().PutConfig(r.Context(), tree, e.Revision,
		discovery.ConfigChange{Author: "admin@" + a.h.client.ID(), Comment: e.Comment})
	var ce *discovery.ConflictError
	switch {
	case errors.As(err, &ce):
		a.done(r, "config_apply", "conflict", "expected", ce.Expected, "current", ce.Current)
		writeJSON(w, http.StatusConflict, adminError{Error: ce.Explain("reload it, redo your change, then apply")})
		return
	case err != nil:
		a.done(r, "config_apply", "error", "err", err)
		writeJSON(w, http.StatusServiceUnavailable, adminError{Error: err.Error()})
		return
	}
	a.done(r, "config_apply", "ok", "revision", rev, "previous", e.Revision, "changes", strings.Join(p.Changes, "; "))
	writeJSON(w, http.StatusOK, adminApplied{Revision: rev, Previous: e.Revision, Changes: p.Changes})
}

// serveDrain asks node id's agent to drain and leave, as pubmesh drain
// does (discovery.Registry.RequestDrain); the page then sees the node
// turn draining and disappear.
func (a *admin) serveDrain(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if err := discovery.ValidID(id); err != nil {
		a.done(r, "drain", "invalid", "node", id)
		writeJSON(w, http.StatusBadRequest, adminError{Error: err.Error()})
		return
	}
	err := a.h.client.Registry().RequestDrain(r.Context(), id, "admin@"+a.h.client.ID())
	if err != nil {
		status := http.StatusServiceUnavailable
		if errors.Is(err, discovery.ErrNoSuchNode) {
			status = http.StatusNotFound
		}
		a.done(r, "drain", "error", "node", id, "err", err)
		writeJSON(w, status, adminError{Error: err.Error()})
		return
	}
	a.done(r, "drain", "ok", "node", id)
	writeJSON(w, http.StatusAccepted, map[string]string{"node": id, "status": "drain requested"})
}
