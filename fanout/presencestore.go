package fanout

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
)

// DefaultPresenceTTL is how long a presence entry lives without a refresh.
const DefaultPresenceTTL = 15 * time.Second

// PresenceOptions configure a Presence.
type PresenceOptions struct {
	// TTL of an entry: a crashed gateway's clients leave presence within
	// it (plus one refresh interval, TTL/3, for someone to prune them).
	// Default: DefaultPresenceTTL.
	TTL time.Duration
	// OnExpire is called, from the Presence's own goroutines, for each
	// entry that expired (its gateway stopped refreshing it) when a
	// Presence pruned it from its channel's home node: a crashed gateway's
	// clients' leave events. Every entry is pruned once per node, so at
	// most one Presence of the cluster reports it (docs/presence.md).
	// Default: nil.
	OnExpire func(channel string, e PresenceEntry)
	// Registerer gets the pubmesh_presence_* metrics. Default: none.
	Registerer prometheus.Registerer
	// Logger. Default: the client's.
	Logger *slog.Logger
}

// Presence is a gateway's view of presence: it adds and removes the
// entries of its own clients, keeps them alive (a refresh every TTL/3),
// moves them to their channel's new home when the ready nodes change, and
// reads every channel's presence cluster-wide. Safe for concurrent use.
type Presence struct {
	c    *Client
	opts PresenceOptions
	log  *slog.Logger
	m    *presenceMetrics

	mu    sync.Mutex // guards chans
	chans map[string]*presenceChan

	kick   chan struct{}
	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{}
}

// presenceChan is this gateway's entries of one channel and the node they
// were last written to.
type presenceChan struct {
	entries map[string]PresenceEntry
	home    string
}

type presenceMetrics struct {
	ops     *prometheus.CounterVec
	errors  *prometheus.CounterVec
	expired prometheus.Counter
	entries prometheus.GaugeFunc
}

// NewPresence starts a Presence on c. Close it before c.
func (c *Client) NewPresence(opts PresenceOptions) (*Presence, error) {
	if opts.TTL <= 0 {
		opts.TTL = DefaultPresenceTTL
	}
	if opts.Logger == nil {
		opts.Logger = c.log
	}
	ctx, cancel := context.WithCancel(c.ctx)
	p := &Presence{c: c, opts: opts, log: opts.Logger, chans: map[string]*presenceChan{},
		kick: make(chan struct{}, 1), ctx: ctx, cancel: cancel, done: make(chan struct{})}
	p.m = &presenceMetrics{
		ops: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "pubmesh", Subsystem: "presence", Name: "operations_total",
			Help: "Presence operations on the nodes, by op: add, remove, refresh (entries rewritten), move (entries moved to a new home), list, stats."}, []string{"op"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "pubmesh", Subsystem: "presence", Name: "errors_total",
			Help: "Presence operations that failed on a node, by op."}, []string{"op"}),
		expired: prometheus.NewCounter(prometheus.CounterOpts{Namespace: "pubmesh", Subsystem: "presence", Name: "expired_total",
			Help: "Entries this gateway pruned from their channel's home after their gateway stopped refreshing them (a crash)."}),
		entries: prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "pubmesh", Subsystem: "presence", Name: "entries",
			Help: "Presence entries of this gateway's clients."}, func() float64 { return float64(p.count()) }),
	}
	if opts.Registerer != nil {
		for _, col := range []prometheus.Collector{p.m.ops, p.m.errors, p.m.expired, p.m.entries} {
			if err := opts.Registerer.Register(col); err != nil {
				cancel()
				return nil, fmt.Errorf("fanout: presence metrics: %w", err)
			}
		}
	}
	go p.run()
	return p, nil
}

// TTL is the entries' time to live.
func (p *Presence) TTL() time.Duration { return p.opts.TTL }

func (p *Presence) count() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, pc := range p.chans {
		n += len(pc.entries)
	}
	return n
}

func (p *Presence) fail(op string, err error) error {
	p.m.errors.WithLabelValues(op).Inc()
	return err
}

// Add puts e in channel's presence (or replaces it, with the same Client)
// and keeps it there until Remove or Close. joined is true when the entry
// was not there before (the client joined).
func (p *Presence) Add(ctx context.Context, channel string, e PresenceEntry) (joined bool, err error) {
	if err := ValidateChannel(channel); err != nil {
		return false, err
	}
	if len(e.Info) > MaxPresenceInfo {
		return false, fmt.Errorf("fanout: presence info of %d bytes is longer than %d", len(e.Info), MaxPresenceInfo)
	}
	if e.Client == "" {
		return false, errors.New("fanout: presence entry without a client id")
	}
	if e.Gateway == "" {
		e.Gateway = p.c.ID()
	}
	home, err := p.c.presenceHome(channel)
	if err != nil {
		return false, p.fail("add", err)
	}
	p.mu.Lock()
	pc := p.chans[channel]
	if pc == nil {
		pc = &presenceChan{entries: map[string]PresenceEntry{}, home: home.node.ID}
		p.chans[channel] = pc
	}
	_, had := pc.entries[e.Client]
	pc.entries[e.Client] = e
	if pc.home != home.node.ID {
		p.kickMove() // the others move with the next pass
	}
	p.mu.Unlock()
	p.m.ops.WithLabelValues("add").Inc()
	isNew, pruned, err := home.presenceAddOn(ctx, channel, e, p.opts.TTL)
	p.expired(channel, home, pruned)
	if err != nil {
		return false, p.fail("add", err)
	}
	return isNew && !had, nil
}

// Remove takes client out of channel's presence, on every node (a copy
// left behind by a move goes too). left is true when it was there.
func (p *Presence) Remove(ctx context.Context, channel, client string) (left bool, err error) {
	p.mu.Lock()
	if pc := p.chans[channel]; pc != nil {
		_, left = pc.entries[client]
		delete(pc.entries, client)
		if len(pc.entries) == 0 {
			delete(p.chans, channel)
		}
	}
	p.mu.Unlock()
	p.m.ops.WithLabelValues("remove").Inc()
	var mu sync.Mutex
	err = p.c.eachPresenceNode(ctx, func(nc *nodeConn) error {
		was, pruned, err := nc.presenceRemoveOn(ctx, channel, client)
		p.expired(channel, nc, pruned)
		mu.Lock()
		left = left || was
		mu.Unlock()
		return err
	})
	if err != nil {
		return left, p.fail("remove", err)
	}
	return left, nil
}

// List returns channel's presence cluster-wide, sorted by client id: it
// reads every node and merges by client id (during a move an entry is on
// two nodes for a moment).
func (p *Presence) List(ctx context.Context, channel string) ([]PresenceEntry, error) {
	if err := ValidateChannel(channel); err != nil {
		return nil, err
	}
	p.m.ops.WithLabelValues("list").Inc()
	var mu sync.Mutex
	merged := map[string]presenceEntry{}
	err := p.c.eachPresenceNode(ctx, func(nc *nodeConn) error {
		got, pruned, err := nc.presenceListOn(ctx, channel)
		p.expired(channel, nc, pruned)
		mu.Lock()
		defer mu.Unlock()
		for _, e := range got {
			if old, ok := merged[e.Client]; !ok || e.expires > old.expires {
				merged[e.Client] = e
			}
		}
		return err
	})
	if err != nil {
		return nil, p.fail("list", err)
	}
	out := make([]PresenceEntry, 0, len(merged))
	for _, e := range merged {
		out = append(out, e.PresenceEntry)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Client < out[j].Client })
	return out, nil
}

// Stats counts channel's presence. When one node at most holds entries of
// the channel (always, but for the moment of a move) it costs a ZCARD and
// an HLEN per node; otherwise it merges the lists, as List.
func (p *Presence) Stats(ctx context.Context, channel string) (PresenceStats, error) {
	if err := ValidateChannel(channel); err != nil {
		return PresenceStats{}, err
	}
	p.m.ops.WithLabelValues("stats").Inc()
	var mu sync.Mutex
	var st PresenceStats
	holders := 0
	err := p.c.eachPresenceNode(ctx, func(nc *nodeConn) error {
		s, pruned, err := nc.presenceCountOn(ctx, channel)
		p.expired(channel, nc, pruned)
		mu.Lock()
		defer mu.Unlock()
		if s.Clients > 0 {
			holders++
			st = s
		}
		return err
	})
	if err != nil {
		return PresenceStats{}, p.fail("stats", err)
	}
	if holders <= 1 {
		return st, nil
	}
	list, err := p.List(ctx, channel)
	if err != nil {
		return PresenceStats{}, err
	}
	users := map[string]struct{}{}
	for _, e := range list {
		if e.User != "" {
			users[e.User] = struct{}{}
		}
	}
	return PresenceStats{Clients: len(list), Users: len(users)}, nil
}

// expired reports entries pruned from node nc: leave events only when nc
// is the channel's home (a copy left on another node by a failed move is
// not a client leaving).
func (p *Presence) expired(channel string, nc *nodeConn, pruned []PresenceEntry) {
	if len(pruned) == 0 {
		return
	}
	p.m.expired.Add(float64(len(pruned)))
	if p.opts.OnExpire == nil {
		return
	}
	if home, err := p.c.presenceHome(channel); err != nil || home.node.ID != nc.node.ID {
		return
	}
	for _, e := range pruned {
		p.opts.OnExpire(channel, e)
	}
}

func (p *Presence) kickMove() {
	select {
	case p.kick <- struct{}{}:
	default:
	}
}

// run refreshes the entries every TTL/3 and moves them when the ready
// nodes change.
func (p *Presence) run() {
	defer close(p.done)
	t := time.NewTicker(p.opts.TTL / 3)
	defer t.Stop()
	for {
		p.c.connMu.Lock()
		changed := p.c.readyC
		p.c.connMu.Unlock()
		select {
		case <-p.ctx.Done():
			return
		case <-t.C:
			p.refresh(true)
		case <-changed:
			p.refresh(false)
		case <-p.kick:
			p.refresh(false)
		}
	}
}

// refresh writes the entries again on their channel's home: all of them
// (all), or only those of channels whose home changed, which it also
// removes from the former home.
func (p *Presence) refresh(all bool) {
	type job struct {
		channel string
		home    *nodeConn
		old     string
		entries []PresenceEntry
	}
	var jobs []job
	p.mu.Lock()
	for ch, pc := range p.chans {
		home, err := p.c.presenceHome(ch)
		if err != nil {
			break // no ready node: nothing to write to
		}
		if !all && pc.home == home.node.ID {
			continue
		}
		j := job{channel: ch, home: home, entries: make([]PresenceEntry, 0, len(pc.entries))}
		if pc.home != home.node.ID {
			j.old = pc.home
			pc.home = home.node.ID
		}
		for _, e := range pc.entries {
			j.entries = append(j.entries, e)
		}
		jobs = append(jobs, j)
	}
	p.mu.Unlock()
	moved := 0
	defer func() {
		if moved > 0 {
			p.log.Info("fanout: presence moved to new homes after the ready nodes changed", "channels", moved)
		}
	}()
	for _, j := range jobs {
		ctx, cancel := context.WithTimeout(p.ctx, p.opts.TTL/3)
		op := "refresh"
		if j.old != "" {
			op = "move"
			p.log.Debug("fanout: presence moves to the channel's new home", "channel", j.channel, "from", j.old, "to", j.home.node.ID, "entries", len(j.entries))
			moved++
		}
		if err := p.write(ctx, j.home, j.channel, j.entries); err != nil {
			p.m.errors.WithLabelValues(op).Inc()
			if p.ctx.Err() == nil {
				p.log.Warn("fanout: presence refresh failed", "channel", j.channel, "node", j.home, "err", err)
			}
			if j.old != "" {
				p.mu.Lock()
				if pc := p.chans[j.channel]; pc != nil && pc.home == j.home.node.ID {
					pc.home = j.old // try the move again next time
				}
				p.mu.Unlock()
			}
		}
		p.m.ops.WithLabelValues(op).Add(float64(len(j.entries)))
		if j.old != "" {
			p.removeLater(j.old, j.channel, j.entries)
		}
		// An entry removed while this pass wrote it must not stay.
		var gone []string
		p.mu.Lock()
		pc := p.chans[j.channel]
		for _, e := range j.entries {
			if pc == nil {
				gone = append(gone, e.Client)
			} else if _, ok := pc.entries[e.Client]; !ok {
				gone = append(gone, e.Client)
			}
		}
		p.mu.Unlock()
		if len(gone) > 0 {
			p.removeAll(ctx, j.home, j.channel, gone)
		}
		cancel()
	}
}

// write adds entries on nc, pipelined.
func (p *Presence) write(ctx context.Context, nc *nodeConn, channel string, entries []PresenceEntry) error {
	now := nowMS()
	args := make([][]any, 0, len(entries))
	for _, e := range entries {
		data, err := json.Marshal(e)
		if err != nil {
			return fmt.Errorf("fanout: presence entry: %w", err)
		}
		args = append(args, []any{now, now + p.opts.TTL.Milliseconds(), e.Client, e.User, data, (2 * p.opts.TTL).Milliseconds()})
	}
	return evalPipelined(ctx, nc, presenceAdd, presenceKeys(channel), args, func(res []any) {
		if len(res) == 2 {
			p.expired(channel, nc, decodePruned(res[1]))
		}
	})
}

// removeAll deletes clients' entries of channel from nc, pipelined.
func (p *Presence) removeAll(ctx context.Context, nc *nodeConn, channel string, clients []string) error {
	now := nowMS()
	args := make([][]any, 0, len(clients))
	for _, id := range clients {
		args = append(args, []any{now, id})
	}
	return evalPipelined(ctx, nc, presenceRemove, presenceKeys(channel), args, func(res []any) {
		if len(res) == 2 {
			p.expired(channel, nc, decodePruned(res[1]))
		}
	})
}

// evalPipelined runs script once per args on nc, in pipelines of 500
// calls, loading the script first if the node does not have it, and hands
// each call's result to each.
func evalPipelined(ctx context.Context, nc *nodeConn, script *redis.Script, keys []string, args [][]any, each func([]any)) error {
	const batch = 500
	loaded := false
	for len(args) > 0 {
		n := min(batch, len(args))
		pipe := nc.rdb.Pipeline()
		cmds := make([]*redis.Cmd, 0, n)
		for _, a := range args[:n] {
			cmds = append(cmds, script.EvalSha(ctx, pipe, keys, a...))
		}
		_, err := pipe.Exec(ctx)
		if err != nil && !loaded && redis.HasErrorPrefix(err, "NOSCRIPT") {
			if lerr := script.Load(ctx, nc.rdb).Err(); lerr != nil {
				return fmt.Errorf("fanout: presence on %s: %w", nc, lerr)
			}
			loaded = true
			continue // the same batch again, now that the node has the script
		}
		if err != nil {
			return fmt.Errorf("fanout: presence on %s: %w", nc, err)
		}
		for _, cmd := range cmds {
			if res, err := cmd.Slice(); err == nil {
				each(res)
			}
		}
		args = args[n:]
	}
	return nil
}

// presenceMoveGrace is how long a moved channel's entries stay on the
// former home after they were written on the new one. A reader reads the
// nodes at once, not at one instant: had the former home been cleared at
// once, a read of the new home just before the write and of the former
// just after the delete would miss the entries. Both copies live for a
// while instead; readers merge them by client id (Stats falls back to a
// merged List while two nodes hold entries).
const presenceMoveGrace = 2 * time.Second

// removeLater removes the moved entries from the former home after
// presenceMoveGrace, unless the channel's home has come back to it.
func (p *Presence) removeLater(old, channel string, entries []PresenceEntry) {
	time.AfterFunc(presenceMoveGrace, func() {
		if p.ctx.Err() != nil {
			return // closing: Close removes every entry
		}
		p.mu.Lock()
		pc := p.chans[channel]
		back := pc != nil && pc.home == old
		p.mu.Unlock()
		if back {
			return
		}
		ctx, cancel := context.WithTimeout(p.ctx, p.opts.TTL/3)
		defer cancel()
		p.removeFrom(ctx, old, channel, entries)
	})
}

// removeFrom deletes entries from the node with id old, if the client
// still has a connection to it.
func (p *Presence) removeFrom(ctx context.Context, old, channel string, entries []PresenceEntry) {
	var nc *nodeConn
	for _, c := range p.c.conns() {
		if c.node.ID == old {
			nc = c
		}
	}
	if nc == nil {
		return // gone: its entries went with it
	}
	ids := make([]string, len(entries))
	for k, e := range entries {
		ids[k] = e.Client
	}
	if err := p.removeAll(ctx, nc, channel, ids); err != nil {
		p.m.errors.WithLabelValues("move").Inc()
		p.log.Warn("fanout: presence entries could not be removed from the former home; they expire within the TTL", "channel", channel, "node", nc, "err", err)
	}
}

// Close stops refreshing and removes every entry of this gateway from the
// nodes (within ctx). The entries left behind, if ctx ends first, expire
// within the TTL.
func (p *Presence) Close(ctx context.Context) error {
	p.cancel()
	<-p.done
	p.mu.Lock()
	chans := p.chans
	p.chans = map[string]*presenceChan{}
	p.mu.Unlock()
	var errs []error
	for ch, pc := range chans {
		ids := make([]string, 0, len(pc.entries))
		for id := range pc.entries {
			ids = append(ids, id)
		}
		if err := p.c.eachPresenceNode(ctx, func(nc *nodeConn) error { return p.removeAll(ctx, nc, ch, ids) }); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
