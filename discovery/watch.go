package discovery

import (
	"context"
	"errors"
	"sort"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Snapshot is the whole set of live nodes at one moment.
type Snapshot struct {
	// Nodes sorted by id.
	Nodes []Node
	// Revision of etcd the set reflects.
	Revision int64
	// Stale is true while etcd cannot be read: Nodes is then the last set
	// known, kept rather than emptied, because an etcd outage says nothing
	// about the nodes.
	Stale bool
	// Err says why the snapshot is stale.
	Err error
}

// Ready returns the nodes in StateReady.
func (s Snapshot) Ready() []Node { return s.InState(StateReady) }

// InState returns the nodes in state st, in id order.
func (s Snapshot) InState(st State) []Node {
	var out []Node
	for _, n := range s.Nodes {
		if n.State == st {
			out = append(out, n)
		}
	}
	return out
}

// WatchOptions tune Watch.
type WatchOptions struct {
	// ProbeInterval is how often the watcher checks that etcd still answers
	// (a watch alone hangs quietly while etcd is down). Default: 1s.
	ProbeInterval time.Duration
	// ProbeTimeout bounds one check. Default: 1s.
	ProbeTimeout time.Duration
}

// Watch sends a Snapshot of the live nodes now and after every change, until
// ctx is done or the etcd client is closed; then it closes the channel. One goroutine owns and closes it.
//
// It lists, then watches from the list's revision + 1, so no change falls
// between the two. When the watch breaks (compaction, lost leader: the watch
// uses WithRequireLeader, so a partitioned member cannot freeze membership)
// it lists again. While etcd cannot be reached it sends the last set with
// Stale set, and never an empty set for that reason.
//
// The channel holds one snapshot: a reader that falls behind gets the
// newest, never a queue of old ones. Each snapshot is complete, so skipping
// one loses nothing.
func (r *Registry) Watch(ctx context.Context, opts WatchOptions) <-chan Snapshot {
	if opts.ProbeInterval == 0 {
		opts.ProbeInterval = time.Second
	}
	if opts.ProbeTimeout == 0 {
		opts.ProbeTimeout = time.Second
	}
	out := make(chan Snapshot, 1)
	go r.watch(ctx, opts, out)
	return out
}

func (r *Registry) watch(ctx context.Context, opts WatchOptions, out chan Snapshot) {
	defer close(out)
	var (
		last    Snapshot
		haveAny bool
		backoff = 100 * time.Millisecond
	)
	send := func(s Snapshot) {
		last, haveAny = s, true
		select {
		case out <- s:
		default:
			select { // replace the unread snapshot with the newer one
			case <-out:
			default:
			}
			out <- s
		}
	}
	stale := func(err error) {
		if !haveAny {
			send(Snapshot{Stale: true, Err: err})
			return
		}
		if !last.Stale || !errors.Is(err, last.Err) {
			s := last
			s.Stale, s.Err = true, err
			send(s)
		}
	}
	for ctx.Err() == nil {
		lctx, cancel := context.WithTimeout(ctx, opts.ProbeTimeout+time.Second)
		nodes, rev, err := r.List(clientv3.WithRequireLeader(lctx))
		cancel()
		if err != nil {
			if ctx.Err() != nil || r.cli.Ctx().Err() != nil { // done, or etcd client closed
				return
			}
			r.cfg.Logger.Warn("discovery: etcd unreachable, keeping last node set", "err", err)
			stale(err)
			sleep(ctx, backoff)
			backoff = min(backoff*2, 2*time.Second)
			continue
		}
		backoff = 100 * time.Millisecond
		set := make(map[string]Node, len(nodes))
		for _, n := range nodes {
			set[n.ID] = n
		}
		send(Snapshot{Nodes: nodes, Revision: rev})
		err = r.follow(ctx, opts, rev, set, send)
		if ctx.Err() != nil || r.cli.Ctx().Err() != nil {
			return
		}
		if errors.Is(err, rpctypes.ErrCompacted) {
			r.cfg.Logger.Info("discovery: watch compacted, listing again", "rev", rev)
			continue
		}
		r.cfg.Logger.Warn("discovery: watch broken, listing again", "err", err)
		stale(err)
		sleep(ctx, backoff)
	}
}

// follow applies watch events to set until the watch or a probe fails.
func (r *Registry) follow(ctx context.Context, opts WatchOptions, rev int64, set map[string]Node, send func(Snapshot)) error {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	wch := r.cli.Watch(wctx, r.keys.nodes(), clientv3.WithPrefix(), clientv3.WithRev(rev+1))
	probe := time.NewTicker(opts.ProbeInterval)
	defer probe.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case wr, ok := <-wch:
			if !ok {
				return errors.New("discovery: watch closed")
			}
			if err := wr.Err(); err != nil {
				return err
			}
			if wr.IsProgressNotify() || len(wr.Events) == 0 {
				continue
			}
			for _, ev := range wr.Events {
				key := string(ev.Kv.Key)
				if ev.Type == clientv3.EventTypeDelete {
					delete(set, strings.TrimPrefix(key, r.keys.nodes()))
				} else {
					r.applyPut(set, ev.Kv)
				}
			}
			send(Snapshot{Nodes: sortedNodes(set), Revision: wr.Header.Revision})
		case <-probe.C:
			pctx, pcancel := context.WithTimeout(clientv3.WithRequireLeader(ctx), opts.ProbeTimeout)
			_, err := r.cli.Get(pctx, r.keys.nodes(), clientv3.WithPrefix(), clientv3.WithCountOnly())
			pcancel()
			if err != nil && ctx.Err() == nil {
				return err
			}
		}
	}
}

// applyPut decodes a node value into set; a value that does not decode
// removes the id (it cannot be trusted) and is logged.
func (r *Registry) applyPut(set map[string]Node, kv *mvccpb.KeyValue) {
	id := strings.TrimPrefix(string(kv.Key), r.keys.nodes())
	n, err := DecodeNode(id, kv.Value)
	if err != nil {
		r.bad.Add(1)
		r.cfg.Logger.Warn("discovery: ignoring bad node value", "key", string(kv.Key), "err", err)
		delete(set, id)
		return
	}
	n.Incarnation = kv.CreateRevision
	set[id] = n
}

func sortedNodes(m map[string]Node) []Node {
	out := make([]Node, 0, len(m))
	for _, n := range m {
		out = append(out, n)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
