package ws

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pubmesh/pubmesh/clusterconfig"
	"github.com/pubmesh/pubmesh/fanout"
)

// Presence (docs/presence.md): a session subscribed to a channel whose
// namespace has presence: true has an entry in the channel's presence, kept
// in the nodes by the gateway's fanout.Presence. With join_leave: true the
// gateway that adds or removes an entry publishes a join or leave frame on
// the reserved channel presenceEventsChannel, which every gateway
// subscribes to and hands to its local subscribers of the frame's channel.

// ReservedPrefix starts the channels the gateways use among themselves
// (join and leave events, the server API). Clients may not subscribe or
// publish to them (bad_request), and pattern subscriptions never deliver
// them.
const ReservedPrefix = "$pm."

const presenceEventsChannel = ReservedPrefix + "presence"

// IsReserved reports whether channel is one of the gateways' own.
func IsReserved(channel string) bool { return strings.HasPrefix(channel, ReservedPrefix) }

// newSessionID returns a random id for a session, unique in the cluster.
func newSessionID() string {
	var b [12]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// clientInfo reads ?info= of a connect: at most fanout.MaxPresenceInfo
// bytes of JSON, compacted; nil when absent.
func clientInfo(r *http.Request) (json.RawMessage, *Error) {
	v := r.URL.Query().Get("info")
	if v == "" {
		return nil, nil
	}
	if len(v) > fanout.MaxPresenceInfo {
		return nil, &Error{Code: CodeTooLarge, Message: fmt.Sprintf("info longer than %d bytes", fanout.MaxPresenceInfo)}
	}
	var buf bytes.Buffer
	if err := json.Compact(&buf, []byte(v)); err != nil {
		return nil, badRequest(nil, "info is not valid JSON: %v", err)
	}
	return json.RawMessage(buf.Bytes()), nil
}

// presenceState is the handler's presence: the store, the join/leave
// feed, the removals in flight, and the metrics.
type presenceState struct {
	h     *Handler
	store *fanout.Presence
	ctx   context.Context
	stop  context.CancelFunc
	wg    sync.WaitGroup // removals and event publishes in flight
	fed   chan struct{}  // closed when follow returns

	ops    *prometheus.CounterVec // presence queries by source and result
	events *prometheus.CounterVec // join/leave frames published and delivered
}

func (h *Handler) startPresence() error {
	ps := &presenceState{h: h}
	ps.ctx, ps.stop = context.WithCancel(context.Background())
	ps.ops = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "pubmesh_ws_presence_queries_total",
		Help: "Presence queries (presence and presence_stats ops, GET /api/presence), by kind (list, stats) and result (ok, error)."}, []string{"kind", "result"})
	ps.events = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "pubmesh_ws_presence_events_total",
		Help: "Join and leave events: published by this gateway (published_join, published_leave, expired_leave: a crashed gateway's client) and frames delivered to local subscribers (delivered)."}, []string{"event"})
	for _, c := range []prometheus.Collector{ps.ops, ps.events} {
		if err := h.cfg.Metrics.Register(c); err != nil {
			return fmt.Errorf("ws: presence metrics: %w", err)
		}
	}
	store, err := h.client.NewPresence(fanout.PresenceOptions{
		TTL: h.cfg.PresenceTTL, Registerer: h.cfg.Metrics, Logger: h.log,
		OnExpire: func(channel string, e fanout.PresenceEntry) {
			if h.limits().doc.For(channel).JoinLeave {
				ps.publishEvent(OpLeave, channel, e, "expired_leave")
			}
		},
	})
	if err != nil {
		return err
	}
	ps.store = store
	h.pres = ps
	ps.fed = make(chan struct{})
	go ps.follow()
	return nil
}

// follow subscribes to the join/leave channel (retrying until the cluster
// has a node) and delivers each event to the local subscribers.
func (ps *presenceState) follow() {
	defer close(ps.fed)
	for ps.ctx.Err() == nil {
		ctx, cancel := context.WithTimeout(ps.ctx, 10*time.Second)
		sub, err := ps.h.client.Subscribe(ctx, presenceEventsChannel)
		cancel()
		if err != nil {
			if ps.ctx.Err() == nil {
				ps.h.log.Warn("ws: cannot subscribe to join/leave events yet, retrying", "err", err)
				sleepCtx(ps.ctx, time.Second)
			}
			continue
		}
		for {
			select {
			case <-ps.ctx.Done():
				sub.Close()
				return
			case m, ok := <-sub.Messages():
				if !ok {
					sub.Close()
					goto again
				}
				ps.deliver(m.Payload)
			}
		}
	again:
	}
}

func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}

// presenceEvent is the frame published for a join or leave; it is sent to
// the channel's subscribers as is.
type presenceEvent struct {
	Op      string               `json:"op"`
	Channel string               `json:"channel"`
	Info    fanout.PresenceEntry `json:"info"`
}

// deliver hands a join or leave frame to the local subscribers of its
// channel, if its namespace still has join_leave.
func (ps *presenceState) deliver(frame []byte) {
	var ev presenceEvent
	if json.Unmarshal(frame, &ev) != nil || (ev.Op != OpJoin && ev.Op != OpLeave) || ev.Channel == "" {
		return
	}
	if !ps.h.limits().doc.For(ev.Channel).JoinLeave {
		return
	}
	f := &outFrame{b: frame, event: ev.Op}
	for _, s := range ps.h.hub.local(ev.Channel) {
		if s.enqueue(f) {
			ps.events.WithLabelValues("delivered").Inc()
		}
	}
}

// publishEvent publishes a join or leave of e on channel, in the
// background.
func (ps *presenceState) publishEvent(op, channel string, e fanout.PresenceEntry, label string) {
	b, _ := json.Marshal(presenceEvent{Op: op, Channel: channel, Info: e})
	ps.wg.Add(1)
	go func() {
		defer ps.wg.Done()
		ctx, cancel := context.WithTimeout(ps.ctx, ps.h.cfg.OpTimeout)
		defer cancel()
		if err := ps.h.client.Publish(ctx, presenceEventsChannel, b); err != nil {
			ps.h.log.Warn("ws: could not publish a presence event", "op", op, "channel", channel, "err", err)
			return
		}
		ps.events.WithLabelValues(label).Inc()
	}()
}

func (ps *presenceState) close() {
	// Removals of the sessions that just ended go first (bounded by
	// OpTimeout each), then the store removes whatever is left.
	done := make(chan struct{})
	go func() { ps.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(ps.h.cfg.OpTimeout):
	}
	ps.stop()
	<-ps.fed
	ps.wg.Wait() // publishes started meanwhile end with ps.ctx
	ctx, cancel := context.WithTimeout(context.Background(), ps.h.cfg.OpTimeout)
	defer cancel()
	if err := ps.store.Close(ctx); err != nil {
		ps.h.log.Warn("ws: presence entries not removed at shutdown; they expire within the TTL", "err", err)
	}
}

// entry is the session's presence entry.
func (s *session) entry() fanout.PresenceEntry {
	user := s.principal().Subject
	if s.principal().Kind == "anonymous" {
		user = ""
	}
	return fanout.PresenceEntry{Client: s.id, User: user, Gateway: s.h.client.ID(), Since: s.connectedAt, Info: s.info}
}

// presenceJoin adds the session's entry to channel's presence, when its
// namespace has presence, before the subscription goes live; it returns
// the join announcement to make once it is live. A failure is logged and
// counted (pubmesh_presence_errors_total); the subscription stands.
func (s *session) presenceJoin(ns clusterconfig.Namespace, channel string) (announce func()) {
	ps := s.h.pres
	if !ns.Presence || ps == nil {
		return func() {}
	}
	if s.inPresence == nil {
		s.inPresence = map[string]bool{}
	}
	s.inPresence[channel] = true
	ctx, cancel := context.WithTimeout(s.ctx, s.h.cfg.OpTimeout)
	defer cancel()
	e := s.entry()
	joined, err := ps.store.Add(ctx, channel, e)
	if err != nil {
		s.log.Warn("ws: presence entry not added", "channel", channel, "err", err)
		return func() {}
	}
	return func() {
		if joined && ns.JoinLeave {
			ps.publishEvent(OpJoin, channel, e, "published_join")
		}
	}
}

// presenceLeave removes the session's entry from channel's presence, in
// the background (it runs on unsubscribe and on close).
func (s *session) presenceLeave(channel string) {
	ps := s.h.pres
	if ps == nil || !s.inPresence[channel] {
		return
	}
	delete(s.inPresence, channel)
	e := s.entry()
	ps.wg.Add(1)
	go func() {
		defer ps.wg.Done()
		ctx, cancel := context.WithTimeout(ps.ctx, s.h.cfg.OpTimeout)
		defer cancel()
		left, err := ps.store.Remove(ctx, channel, e.Client)
		if err != nil && !errors.Is(err, fanout.ErrClosed) {
			s.log.Warn("ws: presence entry not removed; it expires within the TTL", "channel", channel, "err", err)
		}
		if left && s.h.limits().doc.For(channel).JoinLeave {
			ps.publishEvent(OpLeave, channel, e, "published_leave")
		}
	}()
}

// presenceOp is the presence query of every transport: the channel name,
// the namespace rule for subscribe and the claims, then presence: true.
func (h *Handler) presenceOp(ctx context.Context, id json.RawMessage, p *Principal, channel string, stats bool) (any, *Error) {
	kind := "list"
	if stats {
		kind = "stats"
	}
	ns, e := h.authorize(h.limits(), id, p, OpSubscribe, channel)
	if e != nil {
		return nil, e
	}
	if !ns.Presence || h.pres == nil {
		return nil, &Error{Code: CodeNoPresence, ID: id, Message: fmt.Sprintf(
			"%s has no presence: its namespace %q has presence: false (the cluster configuration's namespaces set it)", channel, ns.Match)}
	}
	ctx, cancel := context.WithTimeout(ctx, h.cfg.OpTimeout)
	defer cancel()
	var out any
	var err error
	if stats {
		out, err = h.pres.store.Stats(ctx, channel)
	} else {
		var list []fanout.PresenceEntry
		list, err = h.pres.store.List(ctx, channel)
		out = list
	}
	if err != nil {
		h.pres.ops.WithLabelValues(kind, "error").Inc()
		return nil, &Error{Code: CodeUnavailable, ID: id, Message: "presence failed: " + err.Error()}
	}
	h.pres.ops.WithLabelValues(kind, "ok").Inc()
	return out, nil
}

// presence answers the presence and presence_stats ops:
//
//	{"op":"presence","id":1,"channel":"c","clients":[{entry},…]}
//	{"op":"presence_stats","id":1,"channel":"c","clients":3,"users":2}
func (s *session) presence(f Frame) *Error {
	out, e := s.h.presenceOp(s.ctx, f.ID, s.principal(), f.Channel, f.Op == OpPresenceStats)
	if e != nil {
		if s.ctx.Err() != nil {
			return nil
		}
		return e
	}
	b := openReply(f.Op, f.ID, 64)
	b = append(b, `,"channel":`...)
	b = appendString(b, f.Channel)
	b = append(b, ',')
	b = appendPresence(b, out)
	s.reply(&outFrame{b: append(b, '}')})
	return nil
}

// appendPresence appends "clients":[…] or "clients":N,"users":M.
func appendPresence(b []byte, out any) []byte {
	switch v := out.(type) {
	case fanout.PresenceStats:
		return fmt.Appendf(b, `"clients":%d,"users":%d`, v.Clients, v.Users)
	case []fanout.PresenceEntry:
		if v == nil {
			v = []fanout.PresenceEntry{}
		}
		j, _ := json.Marshal(v)
		b = append(b, `"clients":`...)
		return append(b, j...)
	}
	return b
}

// servePresence is GET /api/presence/{channel} and
// GET /api/presence/{channel}/stats, authorized as a subscribe to channel.
func (h *Handler) servePresence(w http.ResponseWriter, r *http.Request) {
	channel := r.PathValue("channel")
	stats := false
	if c, ok := strings.CutSuffix(channel, "/stats"); ok {
		channel, stats = c, true
	}
	r.SetPathValue("channel", channel)
	p, channel, ok := h.httpAuthenticate(w, r, OpSubscribe)
	if !ok {
		return
	}
	out, e := h.presenceOp(r.Context(), nil, p, channel, stats)
	if e != nil {
		h.httpError(w, e)
		return
	}
	b := append([]byte(`{"channel":`), appendString(nil, channel)...)
	b = appendPresence(append(b, ','), out)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	w.Write(append(b, '}', '\n'))
}

// local returns the sessions subscribed to channel on this gateway.
func (b *hub) local(name string) []*session {
	sh := b.shard(name)
	sh.mu.Lock()
	ch := sh.channels[name]
	sh.mu.Unlock()
	if ch == nil {
		return nil
	}
	return *ch.subs.Load()
}
