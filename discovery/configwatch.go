package discovery

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/pubmesh/pubmesh/clusterconfig"
)

// AppliedConfig is the configuration a process runs: a valid document and
// the revision it came from (0: no configuration in etcd, the defaults).
type AppliedConfig struct {
	Revision int64
	Doc      *clusterconfig.Document
}

// ConfigWatcher keeps the cluster configuration current. It lists, then
// watches the key from the next revision, as Watch does for nodes. A
// revision that does not parse or validate is ignored: the watcher keeps
// the last good one, logs one line and counts it (BadRevisions). While etcd
// cannot be reached it keeps the last good configuration.
type ConfigWatcher struct {
	r        *Registry
	cur      atomic.Pointer[AppliedConfig]
	bad      atomic.Uint64
	onChange func(old, cur AppliedConfig)
	changed  chan struct{}
	done     chan struct{}
	stop     context.CancelFunc
	mu       sync.Mutex // serialises onChange calls with the first one
}

// ConfigWatchOptions tune WatchConfig.
type ConfigWatchOptions struct {
	// OnChange is called, from the watcher's goroutine and one call at a
	// time, after each new configuration is in force (Current returns it),
	// with the previous one. Default: none.
	OnChange func(old, cur AppliedConfig)
}

// WatchConfig reads the configuration (ctx bounds that read only) and
// then follows it until Close. When the key holds a bad document at start,
// the newest good one of the history is used (or the defaults).
func (r *Registry) WatchConfig(ctx context.Context, opts ConfigWatchOptions) (*ConfigWatcher, error) {
	w := &ConfigWatcher{r: r, onChange: opts.OnChange, changed: make(chan struct{}, 1), done: make(chan struct{})}
	rev, err := w.load(ctx)
	if err != nil {
		return nil, fmt.Errorf("discovery: read config: %w", err)
	}
	life, stop := context.WithCancel(context.Background())
	w.stop = stop
	go w.run(life, rev)
	return w, nil
}

// Close stops the watch and waits for it (and any OnChange call) to end.
func (w *ConfigWatcher) Close() {
	w.stop()
	<-w.done
}

// Current returns the configuration in force.
func (w *ConfigWatcher) Current() AppliedConfig { return *w.cur.Load() }

// Changed is signalled (capacity one) after each new configuration.
func (w *ConfigWatcher) Changed() <-chan struct{} { return w.changed }

// BadRevisions is how many revisions were ignored because they did not
// parse or validate.
func (w *ConfigWatcher) BadRevisions() uint64 { return w.bad.Load() }

// load reads the key and applies it; it returns the etcd revision to watch
// after.
func (w *ConfigWatcher) load(ctx context.Context) (int64, error) {
	resp, err := w.r.cli.Get(ctx, w.r.keys.config())
	if err != nil {
		return 0, err
	}
	if len(resp.Kvs) == 0 {
		w.apply(AppliedConfig{Doc: clusterconfig.Defaults()})
		return resp.Header.Revision, nil
	}
	kv := resp.Kvs[0]
	if w.cur.Load() != nil && w.cur.Load().Revision == kv.ModRevision {
		return resp.Header.Revision, nil
	}
	doc, perr := clusterconfig.Parse(kv.Value)
	if perr == nil {
		w.apply(AppliedConfig{Revision: kv.ModRevision, Doc: doc})
		return resp.Header.Revision, nil
	}
	w.refuse(kv.ModRevision, perr)
	if w.cur.Load() == nil { // at start: the newest good write, or the defaults
		w.apply(w.lastGood(ctx, kv.ModRevision))
	}
	return resp.Header.Revision, nil
}

func (w *ConfigWatcher) lastGood(ctx context.Context, before int64) AppliedConfig {
	hist, err := w.r.ConfigHistory(ctx)
	if err == nil {
		for i := len(hist) - 1; i >= 0; i-- {
			if hist[i].Revision >= before {
				continue
			}
			if doc, err := clusterconfig.Parse(hist[i].Document); err == nil {
				w.r.cfg.Logger.Warn("discovery: running the newest good config revision of the history", "revision", hist[i].Revision)
				return AppliedConfig{Revision: hist[i].Revision, Doc: doc}
			}
		}
	}
	w.r.cfg.Logger.Warn("discovery: running the default configuration")
	return AppliedConfig{Doc: clusterconfig.Defaults()}
}

func (w *ConfigWatcher) refuse(rev int64, err error) {
	w.bad.Add(1)
	w.r.cfg.Logger.Warn("discovery: ignoring a bad cluster configuration, keeping the last good one",
		"revision", rev, "err", err)
}

func (w *ConfigWatcher) apply(c AppliedConfig) {
	w.mu.Lock()
	defer w.mu.Unlock()
	old := w.cur.Swap(&c)
	if old != nil && old.Revision == c.Revision {
		return
	}
	if old != nil {
		w.r.cfg.Logger.Info("discovery: cluster configuration changed", "revision", c.Revision, "from", old.Revision,
			"changes", clusterconfig.Summary(clusterconfig.Diff(old.Doc, c.Doc), 5))
		if w.onChange != nil {
			w.onChange(*old, c)
		}
	}
	select {
	case w.changed <- struct{}{}:
	default:
	}
}

func (w *ConfigWatcher) run(ctx context.Context, rev int64) {
	defer close(w.done)
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil && w.r.cli.Ctx().Err() == nil {
		err := w.follow(ctx, rev)
		if ctx.Err() != nil || w.r.cli.Ctx().Err() != nil {
			return
		}
		if !errors.Is(err, rpctypes.ErrCompacted) {
			w.r.cfg.Logger.Warn("discovery: config watch broken, keeping the last good configuration", "err", err)
			sleep(ctx, backoff)
			backoff = min(backoff*2, 2*time.Second)
		}
		lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		next, err := w.load(clientv3.WithRequireLeader(lctx))
		cancel()
		if err == nil {
			rev, backoff = next, 100*time.Millisecond
		}
	}
}

// follow applies the key's changes after rev until the watch fails.
func (w *ConfigWatcher) follow(ctx context.Context, rev int64) error {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	for wr := range w.r.cli.Watch(wctx, w.r.keys.config(), clientv3.WithRev(rev+1)) {
		if err := wr.Err(); err != nil {
			return err
		}
		for _, ev := range wr.Events {
			if ev.Type == clientv3.EventTypeDelete {
				w.r.cfg.Logger.Warn("discovery: the cluster configuration was deleted: back to the defaults", "revision", ev.Kv.ModRevision)
				w.apply(AppliedConfig{Doc: clusterconfig.Defaults()})
				continue
			}
			doc, err := clusterconfig.Parse(ev.Kv.Value)
			if err != nil {
				w.refuse(ev.Kv.ModRevision, err)
				continue
			}
			w.apply(AppliedConfig{Revision: ev.Kv.ModRevision, Doc: doc})
		}
	}
	return errors.New("discovery: config watch closed")
}
