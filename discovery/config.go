package discovery

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/pubmesh/pubmesh/clusterconfig"
)

// MaxConfigHistory is how many past configuration writes ConfigHistory
// keeps.
const MaxConfigHistory = 100

// ErrConfigConflict is how PutConfig fails when the configuration changed
// since the revision the caller read: somebody else wrote first.
var ErrConfigConflict = errors.New("discovery: the cluster configuration changed since it was read")

// ConflictError says which revision is current now. It matches
// ErrConfigConflict.
type ConflictError struct{ Expected, Current int64 }

func (e *ConflictError) Error() string {
	return fmt.Sprintf("%v: expected revision %d, now %d (read it again, then retry)", ErrConfigConflict, e.Expected, e.Current)
}

// Explain says the conflict for a person, ending with how to retry
// (retry, such as "read it again with pubmesh config get, then retry"):
// pubmesh config and the gateway's admin page say it the same way.
func (e *ConflictError) Explain(retry string) string {
	return fmt.Sprintf("conflict: the configuration is at revision %d, not %d: somebody else changed it; nothing was written (%s)", e.Current, e.Expected, retry)
}

// Is makes errors.Is(err, ErrConfigConflict) true.
func (e *ConflictError) Is(target error) bool { return target == ErrConfigConflict }

// StoredConfig is the configuration key as etcd holds it.
type StoredConfig struct {
	// Revision is the etcd revision that last wrote the key; 0 when there
	// is no key (the defaults are in force).
	Revision int64
	// Raw is the stored JSON, nil when there is no key.
	Raw []byte
	// Doc is the parsed document, or nil when Raw does not parse (Err then
	// says why).
	Doc *clusterconfig.Document
	Err error
}

// ConfigRevision is one write of the configuration, kept under
// config-history/.
type ConfigRevision struct {
	// Revision the write made (the key's CreateRevision).
	Revision int64     `json:"-"`
	Author   string    `json:"author"`
	At       time.Time `json:"at"`
	// Comment, if the writer gave one.
	Comment string `json:"comment,omitempty"`
	// RollbackOf is the revision this write restored, if it is a rollback.
	RollbackOf int64 `json:"rollback_of,omitempty"`
	// Previous is the revision the writer replaced (0: none).
	Previous int64 `json:"previous"`
	// Document is what was written.
	Document json.RawMessage `json:"document"`
}

// ConfigChange describes a write for the history.
type ConfigChange struct {
	Author     string
	Comment    string
	RollbackOf int64
}

// Config reads the configuration key. A key that does not parse is
// returned with Doc nil and Err set, so a caller can show and replace it.
func (r *Registry) Config(ctx context.Context) (StoredConfig, error) {
	resp, err := r.cli.Get(ctx, r.keys.config())
	if err != nil {
		return StoredConfig{}, fmt.Errorf("discovery: read config: %w", err)
	}
	if len(resp.Kvs) == 0 {
		return StoredConfig{Doc: clusterconfig.Defaults()}, nil
	}
	kv := resp.Kvs[0]
	doc, perr := clusterconfig.Parse(kv.Value)
	return StoredConfig{Revision: kv.ModRevision, Raw: kv.Value, Doc: doc, Err: perr}, nil
}

// PutConfig validates tree and writes it if the configuration is still at
// revision expect (0: there is no configuration yet), recording the write
// in the history in the same transaction. It returns the new revision. A
// document that fails validation is not written (*clusterconfig.
// ValidationError); a configuration changed meanwhile fails with a
// *ConflictError.
func (r *Registry) PutConfig(ctx context.Context, tree map[string]any, expect int64, ch ConfigChange) (int64, error) {
	if _, err := clusterconfig.FromTree(tree); err != nil {
		return 0, err
	}
	raw, err := clusterconfig.Encode(tree)
	if err != nil {
		return 0, err
	}
	rec, _ := json.Marshal(ConfigRevision{
		Author: ch.Author, At: time.Now().UTC(), Comment: ch.Comment, RollbackOf: ch.RollbackOf,
		Previous: expect, Document: raw,
	})
	key := r.keys.config()
	hist := fmt.Sprintf("%s%020d", r.keys.configHistory(), time.Now().UnixNano())
	txn, err := r.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.ModRevision(key), "=", expect)).
		Then(clientv3.OpPut(key, string(raw)), clientv3.OpPut(hist, string(rec))).
		Else(clientv3.OpGet(key)).
		Commit()
	if err != nil {
		return 0, fmt.Errorf("discovery: write config: %w", err)
	}
	if !txn.Succeeded {
		cur := int64(0)
		if kvs := txn.Responses[0].GetResponseRange().Kvs; len(kvs) > 0 {
			cur = kvs[0].ModRevision
		}
		return 0, &ConflictError{Expected: expect, Current: cur}
	}
	r.pruneConfigHistory(ctx)
	return txn.Header.Revision, nil
}

// ApplyConfig replaces the configuration with doc (YAML or JSON) if it did
// not change between its read and its write (else a *ConflictError), as
// pubmesh config apply does without --if-revision. It returns the new
// revision.
func (r *Registry) ApplyConfig(ctx context.Context, doc []byte, ch ConfigChange) (int64, error) {
	tree, err := clusterconfig.Decode(doc)
	if err != nil {
		return 0, err
	}
	cur, err := r.Config(ctx)
	if err != nil {
		return 0, err
	}
	return r.PutConfig(ctx, tree, cur.Revision, ch)
}

// pruneConfigHistory deletes the oldest entries past MaxConfigHistory. A
// failure only leaves more history.
func (r *Registry) pruneConfigHistory(ctx context.Context) {
	resp, err := r.cli.Get(ctx, r.keys.configHistory(), clientv3.WithPrefix(), clientv3.WithKeysOnly(),
		clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend))
	if err != nil || len(resp.Kvs) <= MaxConfigHistory {
		return
	}
	end := string(resp.Kvs[len(resp.Kvs)-MaxConfigHistory].Key)
	if _, err := r.cli.Delete(ctx, r.keys.configHistory(), clientv3.WithRange(end)); err != nil {
		r.cfg.Logger.Warn("discovery: pruning config history", "err", err)
	}
}

// ConfigHistory returns the recorded writes, oldest first.
func (r *Registry) ConfigHistory(ctx context.Context) ([]ConfigRevision, error) {
	resp, err := r.cli.Get(ctx, r.keys.configHistory(), clientv3.WithPrefix(),
		clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend))
	if err != nil {
		return nil, fmt.Errorf("discovery: read config history: %w", err)
	}
	out := make([]ConfigRevision, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		var c ConfigRevision
		if err := json.Unmarshal(kv.Value, &c); err != nil {
			r.cfg.Logger.Warn("discovery: ignoring bad config history entry", "key", string(kv.Key), "err", err)
			continue
		}
		c.Revision = kv.CreateRevision
		out = append(out, c)
	}
	return out, nil
}

// ConfigAt returns the recorded write that made revision rev.
func (r *Registry) ConfigAt(ctx context.Context, rev int64) (ConfigRevision, error) {
	hist, err := r.ConfigHistory(ctx)
	if err != nil {
		return ConfigRevision{}, err
	}
	for _, c := range hist {
		if c.Revision == rev {
			return c, nil
		}
	}
	return ConfigRevision{}, fmt.Errorf("discovery: no recorded config revision %d (see pubmesh config history; the newest %d are kept)", rev, MaxConfigHistory)
}
