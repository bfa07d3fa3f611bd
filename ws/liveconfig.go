package ws

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"github.com/pubmesh/pubmesh/clusterconfig"
	"github.com/pubmesh/pubmesh/discovery"
)

// The gateway follows the cluster configuration its fanout client watches
// (fanout.Client.ClusterConfig): limits and namespace rules apply from the
// next request after a change, without touching open connections or
// subscriptions. Config fields that are set override the cluster's values
// for this gateway.

// limits are what the gateway applies for one configuration revision: the
// cluster's document with this gateway's overrides. They are computed once
// per revision (Handler.limits), not per frame, and never modified.
type limits struct {
	rev int64
	doc *clusterconfig.Document // the cluster's, as the fanout client runs it
	seq uint64                  // counts the switches: orders limits, unlike rev (0 again after a deletion)

	maxSubscriptions   int     // per connection; negative: no limit
	maxConnsPerSubject int     // negative: no limit
	publishRate        float64 // per second; negative: no limit
	publishBurst       int
	sendQueue          int // frames; new connections
	maxFrameBytes      int // new connections
	pingInterval       time.Duration
	publishBytes       int // the override of every namespace's max_publish_bytes; 0: none
	// anonymous: a namespace lets clients without a credential subscribe
	// or publish, so such a client may connect.
	anonymous bool
}

// effectiveLimits applies cfg's overrides (fields that are not zero) to
// the cluster configuration ac. In the document 0 means no limit for the
// rate, subscriptions and connections; in Config, a negative value.
func effectiveLimits(cfg *Config, ac discovery.AppliedConfig) *limits {
	doc := ac.Doc
	if doc == nil {
		doc = clusterconfig.Defaults()
	}
	g := doc.Gateway
	l := &limits{
		rev:                ac.Revision,
		doc:                doc,
		maxSubscriptions:   limitOf(cfg.MaxSubscriptions, g.MaxSubscriptions),
		maxConnsPerSubject: limitOf(cfg.MaxConnectionsPerSubject, g.MaxConnectionsPerSubject),
		publishRate:        g.PublishRate,
		publishBurst:       orDefault(cfg.PublishBurst, g.PublishBurst),
		sendQueue:          orDefault(cfg.SendQueue, g.SendQueue),
		maxFrameBytes:      orDefault(cfg.MaxFrameBytes, g.MaxFrameBytes),
		pingInterval:       orDefault(cfg.PingInterval, time.Duration(g.PingInterval)),
		publishBytes:       cfg.MaxPublishBytes,
	}
	switch {
	case cfg.PublishRate < 0, cfg.PublishRate == 0 && g.PublishRate == 0:
		l.publishRate = -1
	case cfg.PublishRate > 0:
		l.publishRate = cfg.PublishRate
	}
	for _, ns := range doc.Namespaces {
		if ns.AllowSubscribe == clusterconfig.AccessAnonymous || ns.AllowPublish == clusterconfig.AccessAnonymous {
			l.anonymous = true
		}
	}
	return l
}

// limitOf is the override when set (negative: no limit), else the
// document's (0: no limit); negative means no limit.
func limitOf(override, doc int) int {
	switch {
	case override < 0, override == 0 && doc == 0:
		return -1
	case override > 0:
		return override
	}
	return doc
}

func orDefault[T int | time.Duration](override, doc T) T {
	if override != 0 {
		return override
	}
	return doc
}

// liveConfig holds the limits in force; NewHandler stores the first.
type liveConfig struct {
	cur      atomic.Pointer[limits]
	mu       sync.Mutex    // serialises the switch to a new revision and its side effects
	followed chan struct{} // closed when followConfig returns
}

// limits returns the limits of the configuration the fanout client runs:
// a pointer comparison per call, a new computation once per revision.
func (h *Handler) limits() *limits {
	ac := h.client.ClusterConfig()
	if l := h.live.cur.Load(); l.doc == ac.Doc && l.rev == ac.Revision {
		return l
	}
	return h.switchConfig()
}

// switchConfig computes the limits of the newest configuration and moves
// the publish buckets and the connection cap to them. It runs under a lock
// and reads the configuration again there, so that two requests racing
// through a change cannot leave the older revision's rates behind.
func (h *Handler) switchConfig() *limits {
	h.live.mu.Lock()
	defer h.live.mu.Unlock()
	ac := h.client.ClusterConfig()
	old := h.live.cur.Load()
	if old.doc == ac.Doc && old.rev == ac.Revision {
		return old
	}
	l := effectiveLimits(&h.cfg, ac)
	l.seq = old.seq + 1
	now := time.Now()
	h.subjects.setLimits(l.publishRate, l.publishBurst, l.maxConnsPerSubject, now)
	h.anonPublishers.setLimits(l.publishRate, l.publishBurst, -1, now)
	h.live.cur.Store(l)
	h.mu.Lock()
	for s := range h.sessions {
		if s.limiter != nil {
			s.limiter.update(l, now)
		}
	}
	h.mu.Unlock()
	h.log.Info("ws: applying the cluster configuration", "revision", l.rev, "from", old.rev)
	return l
}

// followConfig applies each new configuration as soon as the fanout
// client has it, rather than at the next request that needs it: a publish
// bucket then refills at the new rate from the change on (not at the old
// one until its next publish), and the log says when the gateway switched.
// It returns when Shutdown cancels h.ctx.
func (h *Handler) followConfig() {
	defer close(h.live.followed)
	// The signal has one slot: if someone else sharing the fanout client
	// takes it, the tick catches the change.
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-h.ctx.Done():
			return
		case <-h.client.ClusterConfigChanged():
		case <-tick.C:
		}
		h.limits()
	}
}

// checkAccess applies the namespace rule of channel for op (OpSubscribe or
// OpPublish) to p: token defers to p's claims (everything for an API key or
// on an insecure gateway), anonymous lets every client in, none no client.
// It returns the namespace, whose options the caller may need.
func (h *Handler) checkAccess(l *limits, id json.RawMessage, p *Principal, op, channel string) (clusterconfig.Namespace, *Error) {
	ns := l.doc.For(channel)
	access, can := ns.AllowSubscribe, p.CanSubscribe
	if op == OpPublish {
		access, can = ns.AllowPublish, p.CanPublish
	}
	switch access {
	case clusterconfig.AccessAnonymous:
		return ns, nil
	case clusterconfig.AccessNone:
		h.metrics.namespaceRefusals.WithLabelValues(op).Inc()
		return ns, &Error{Code: CodeForbidden, ID: id,
			Message: fmt.Sprintf("no client may %s to %s: namespace %q allows %s to none", op, channel, ns.Match, op)}
	}
	if can(channel) {
		return ns, nil
	}
	return ns, &Error{Code: CodeForbidden, Message: "not allowed to " + op + " to " + channel, ID: id}
}

// maxPublishBytes is the largest data a client may publish in ns.
func (l *limits) maxPublishBytes(ns clusterconfig.Namespace) int {
	if l.publishBytes > 0 {
		return l.publishBytes
	}
	return ns.MaxPublishBytes
}

// anonymousPublish reports whether a client without a credential may
// publish to channel.
func (l *limits) anonymousPublish(channel string) bool {
	return l.anonymous && l.doc.For(channel).AllowPublish == clusterconfig.AccessAnonymous
}

// authenticate returns r's principal. A request without any credential
// (no Authorization header, no token parameter, not even an empty one) is
// the anonymous principal when anonymousOK, instead of a 401: it has no
// claims, so only namespaces that allow anonymous let it in. A credential
// that is present but invalid is always refused.
func (h *Handler) authenticate(r *http.Request, anonymousOK bool, transport string) (*Principal, error) {
	p, err := h.auth.authenticate(r)
	var ae *authError
	if err == nil || !anonymousOK || hasCredential(r) || !errors.As(err, &ae) || ae.reason != "missing" {
		return p, err
	}
	h.metrics.anonymous.WithLabelValues(transport).Inc()
	return &Principal{Subject: "anonymous", Kind: "anonymous"}, nil
}

func hasCredential(r *http.Request) bool {
	return len(r.Header.Values("Authorization")) > 0 || r.URL.Query().Has("token")
}

// clientAddr is the host of r's remote address: the key of the publish
// bucket of HTTP publishes without a credential.
func clientAddr(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// connLimiter is a WebSocket connection's own publish bucket (API keys,
// clients without a credential, an insecure gateway). switchConfig moves
// it to the limits of each new revision; a publish that raced with the
// switch moves it too (the connection may have opened meanwhile).
type connLimiter struct {
	mu   sync.Mutex
	lim  *rate.Limiter // nil: no limit
	from *limits       // the limits lim was set from
}

func newConnLimiter(l *limits) *connLimiter {
	c := &connLimiter{}
	c.updateLocked(l, time.Now())
	return c
}

func (c *connLimiter) update(l *limits, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.updateLocked(l, now)
}

// updateLocked applies l unless the bucket follows newer limits already.
func (c *connLimiter) updateLocked(l *limits, now time.Time) {
	if c.from != nil && l.seq <= c.from.seq {
		return
	}
	c.from = l
	switch {
	case l.publishRate < 0:
		c.lim = nil // see subjects.setLimits: never rate.Inf
	case c.lim == nil:
		c.lim = rate.NewLimiter(rate.Limit(l.publishRate), l.publishBurst)
	default:
		setRate(c.lim, rate.Limit(l.publishRate), l.publishBurst, now)
	}
}

func (c *connLimiter) allow(l *limits, now time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.updateLocked(l, now)
	return c.lim == nil || c.lim.AllowN(now, 1)
}

// override is one Config field that wins over the cluster configuration.
type override struct {
	key   string // the configuration key it replaces
	value any
}

// overrides lists cfg's overrides, in a fixed order.
func (c *Config) overrides() []override {
	var o []override
	add := func(key string, set bool, v any) {
		if set {
			o = append(o, override{key, v})
		}
	}
	add("gateway.publish_rate", c.PublishRate != 0, c.PublishRate)
	add("gateway.publish_burst", c.PublishBurst != 0, c.PublishBurst)
	add("gateway.max_subscriptions", c.MaxSubscriptions != 0, c.MaxSubscriptions)
	add("gateway.max_connections_per_subject", c.MaxConnectionsPerSubject != 0, c.MaxConnectionsPerSubject)
	add("gateway.send_queue", c.SendQueue != 0, c.SendQueue)
	add("gateway.max_frame_bytes", c.MaxFrameBytes != 0, c.MaxFrameBytes)
	add("gateway.ping_interval", c.PingInterval != 0, c.PingInterval.String())
	add("namespaces[*].max_publish_bytes", c.MaxPublishBytes != 0, c.MaxPublishBytes)
	return o
}

// ConfigResponse is the body of GET /api/config.
type ConfigResponse struct {
	// Revision of the cluster configuration the gateway runs (0: none in
	// etcd, the defaults).
	Revision int64 `json:"revision"`
	// InvalidRevisions counts the revisions ignored because they did not
	// parse or validate.
	InvalidRevisions uint64 `json:"invalid_revisions"`
	// Document is the cluster configuration of Revision, every default
	// included. It holds no secret.
	Document json.RawMessage `json:"document"`
	// Overrides are this gateway's values that win over Document, by
	// configuration key (a negative limit: none).
	Overrides map[string]any `json:"overrides"`
}

// serveConfig is GET /api/config, open like /healthz: the configuration
// holds no secret, and an operator checks with it that every gateway
// caught up with a change.
func (h *Handler) serveConfig(w http.ResponseWriter, r *http.Request) {
	l := h.limits()
	resp := ConfigResponse{Revision: l.rev, InvalidRevisions: h.client.ClusterConfigInvalid(),
		Document: l.doc.JSON(), Overrides: map[string]any{}}
	for _, o := range h.cfg.overrides() {
		resp.Overrides[o.key] = o.value
	}
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, http.StatusOK, resp)
}
