package ws

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sort"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pubmesh/pubmesh/discovery"
	"github.com/pubmesh/pubmesh/fanout"
)

// The server API (docs/protocol.md) acts on every gateway of the cluster:
// the gateway that takes the request publishes it on the reserved channel
// controlChannel, which every gateway subscribes to through fanout; each
// gateway acts on its own sessions and answers on the asker's reply
// channel (replyPrefix + its id). The asker waits for an answer from each
// gateway listed in the registry (discovery.Registry.Gateways), up to
// APITimeout, and lists those that did not answer.
const (
	controlChannel = ReservedPrefix + "control"
	replyPrefix    = ReservedPrefix + "reply."
)

// controlRequest is one server API request on controlChannel.
type controlRequest struct {
	Req       string `json:"req"`
	From      string `json:"from"`
	Op        string `json:"op"` // disconnect, unsubscribe, channels, info
	User      string `json:"user,omitempty"`
	Client    string `json:"client,omitempty"`
	Channel   string `json:"channel,omitempty"`
	Pattern   string `json:"pattern,omitempty"`
	Reason    string `json:"reason,omitempty"`
	Reconnect bool   `json:"reconnect,omitempty"`
}

// GatewayAnswer is one gateway's answer to a server API request.
type GatewayAnswer struct {
	Gateway string `json:"gateway"`
	Req     string `json:"req,omitempty"`
	// Sessions closed (disconnect) or unsubscribed (unsubscribe).
	Affected int `json:"affected"`
	// Channels with their local subscriber counts (channels).
	Channels map[string]int `json:"channels,omitempty"`
	// Connections by transport, subscriptions (info).
	Connections   map[string]int `json:"connections,omitempty"`
	Subscriptions int            `json:"subscriptions,omitempty"`
}

// control is the handler's side of the control channel.
type control struct {
	h       *Handler
	ctx     context.Context
	stop    context.CancelFunc
	wg      sync.WaitGroup
	ready   chan struct{} // closed once both subscriptions are made
	mu      sync.Mutex
	waiting map[string]chan GatewayAnswer
	calls   *prometheus.CounterVec
}

func (h *Handler) startControl() error {
	c := &control{h: h, ready: make(chan struct{}), waiting: map[string]chan GatewayAnswer{}}
	c.ctx, c.stop = context.WithCancel(context.Background())
	c.calls = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "pubmesh_ws_server_api_calls_total",
		Help: "Server API calls this gateway took (disconnect, unsubscribe, channels, info), by result: ok, partial (some gateway did not answer), refused, error."}, []string{"call", "result"})
	if err := h.cfg.Metrics.Register(c.calls); err != nil {
		return fmt.Errorf("ws: server API metrics: %w", err)
	}
	h.ctl = c
	c.wg.Add(1)
	go c.follow()
	return nil
}

// follow subscribes to the control and reply channels (retrying until the
// cluster has a node) and serves them.
func (c *control) follow() {
	defer c.wg.Done()
	var sub *fanout.Subscription
	for c.ctx.Err() == nil {
		ctx, cancel := context.WithTimeout(c.ctx, 10*time.Second)
		s, err := c.h.client.Subscribe(ctx, controlChannel, replyPrefix+c.h.client.ID())
		cancel()
		if err == nil {
			sub = s
			break
		}
		c.h.log.Warn("ws: cannot subscribe to the server API's control channel yet, retrying", "err", err)
		sleepCtx(c.ctx, time.Second)
	}
	if sub == nil {
		return
	}
	defer sub.Close()
	close(c.ready)
	for {
		select {
		case <-c.ctx.Done():
			return
		case m, ok := <-sub.Messages():
			if !ok {
				return
			}
			if m.Channel == controlChannel {
				var req controlRequest
				if json.Unmarshal(m.Payload, &req) == nil && req.Req != "" {
					c.wg.Add(1)
					go func() { defer c.wg.Done(); c.serve(req) }()
				}
				continue
			}
			var a GatewayAnswer
			if json.Unmarshal(m.Payload, &a) == nil {
				c.mu.Lock()
				ch := c.waiting[a.Req]
				c.mu.Unlock()
				if ch != nil {
					select {
					case ch <- a:
					default:
					}
				}
			}
		}
	}
}

// serve acts on this gateway's sessions and answers.
func (c *control) serve(req controlRequest) {
	h := c.h
	a := GatewayAnswer{Gateway: h.client.ID(), Req: req.Req}
	switch req.Op {
	case "disconnect":
		code := CloseDisconnect
		if req.Reconnect {
			code = CloseDisconnectReconnect
		}
		reason := req.Reason
		if reason == "" {
			reason = "disconnected by the server"
		}
		for _, s := range h.sessionList() {
			if (req.Client != "" && s.id == req.Client) || (req.User != "" && s.principal().Subject == req.User) {
				if s.close(code, truncate(reason, 120)) {
					a.Affected++
				}
			}
		}
	case "unsubscribe":
		for _, s := range h.hub.local(req.Channel) {
			if s.principal().Subject == req.User && h.hub.evict(s, req.Channel) {
				a.Affected++
			}
		}
	case "channels":
		a.Channels = h.hub.counts(req.Pattern)
	case "info":
		a.Connections, a.Subscriptions, _ = h.counts()
	}
	b, _ := json.Marshal(a)
	ctx, cancel := context.WithTimeout(c.ctx, h.cfg.APITimeout)
	defer cancel()
	if err := h.client.Publish(ctx, replyPrefix+req.From, b); err != nil {
		h.log.Warn("ws: could not answer a server API request", "op", req.Op, "from", req.From, "err", err)
	}
}

// ask publishes req to every gateway and gathers their answers: it
// returns once every registered gateway answered, or after APITimeout,
// with the registered gateways that did not answer.
func (c *control) ask(ctx context.Context, req controlRequest) ([]GatewayAnswer, []string, error) {
	h := c.h
	select {
	case <-c.ready:
	case <-ctx.Done():
		return nil, nil, ctx.Err()
	case <-time.After(h.cfg.APITimeout):
		return nil, nil, errors.New("not subscribed to the control channel yet")
	}
	req.Req, req.From = newSessionID(), h.client.ID()
	expected := map[string]bool{}
	if gws, err := h.client.Registry().Gateways(ctx); err == nil {
		for _, g := range gws {
			expected[g.ID] = true
		}
	}
	answers := make(chan GatewayAnswer, 64)
	c.mu.Lock()
	c.waiting[req.Req] = answers
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.waiting, req.Req)
		c.mu.Unlock()
	}()
	b, _ := json.Marshal(req)
	if err := h.client.Publish(ctx, controlChannel, b); err != nil {
		return nil, nil, err
	}
	t := time.NewTimer(h.cfg.APITimeout)
	defer t.Stop()
	got := map[string]GatewayAnswer{}
	for {
		done := len(expected) > 0
		for id := range expected {
			if _, ok := got[id]; !ok {
				done = false
			}
		}
		if done {
			break
		}
		select {
		case a := <-answers:
			got[a.Gateway] = a
			continue
		case <-t.C:
		case <-ctx.Done():
		}
		break
	}
	var out []GatewayAnswer
	for _, a := range got {
		a.Req = ""
		out = append(out, a)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Gateway < out[j].Gateway })
	missing := []string{}
	for id := range expected {
		if _, ok := got[id]; !ok {
			missing = append(missing, id)
		}
	}
	sort.Strings(missing)
	return out, missing, nil
}

func (c *control) close() {
	c.stop()
	c.wg.Wait()
}

// sessionList returns the handler's sessions.
func (h *Handler) sessionList() []*session {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make([]*session, 0, len(h.sessions))
	for s := range h.sessions {
		out = append(out, s)
	}
	return out
}

// counts are this gateway's connections by transport, its sessions'
// subscriptions and its channels (the reserved ones left out).
func (h *Handler) counts() (conns map[string]int, subs, channels int) {
	conns = map[string]int{}
	for _, s := range h.sessionList() {
		conns[transportName(s.transport)]++
	}
	for name, n := range h.hub.counts("") {
		_ = name
		subs += n
		channels++
	}
	return conns, subs, channels
}

// transportName is the name a transport has in counts: "websocket" for
// "ws", the others as they are.
func transportName(t string) string {
	if t == "ws" {
		return "websocket"
	}
	return t
}

// counts returns the channels matching pattern (a glob: '*' any run of
// characters, '?' one; "" all) with their local subscriber counts.
func (b *hub) counts(pattern string) map[string]int {
	out := map[string]int{}
	for i := range b.shards {
		sh := &b.shards[i]
		sh.mu.Lock()
		for name, ch := range sh.channels {
			if IsReserved(name) || (pattern != "" && !globMatch(pattern, name)) {
				continue
			}
			if n := len(*ch.subs.Load()); n > 0 {
				out[name] = n
			}
		}
		sh.mu.Unlock()
	}
	return out
}

// evict takes s out of channel name's delivery list: a server-side
// unsubscribe. The session's own record of the subscription (and the
// hub's reference) stays until the client unsubscribes, subscribes again
// (which then subscribes afresh) or leaves; its presence entry goes now.
func (b *hub) evict(s *session, name string) bool {
	sh := b.shard(name)
	sh.mu.Lock()
	ch := sh.channels[name]
	removed := false
	if ch != nil {
		if old := *ch.subs.Load(); containsSession(old, s) {
			subs := make([]*session, 0, len(old)-1)
			for _, x := range old {
				if x != s {
					subs = append(subs, x)
				}
			}
			ch.subs.Store(&subs)
			removed = true
		}
	}
	sh.mu.Unlock()
	if !removed {
		return false
	}
	s.evicted.Store(name, true)
	b.h.metrics.subscriptions.Dec()
	f := openReply("unsubscribed", nil, 32+len(name))
	f = append(f, `,"channel":`...)
	f = appendString(f, name)
	s.enqueue(&outFrame{b: append(f, '}'), event: OpUnsubscribed})
	if ps := b.h.pres; ps != nil {
		e := s.entry()
		ps.wg.Add(1)
		go func() {
			defer ps.wg.Done()
			ctx, cancel := context.WithTimeout(ps.ctx, b.h.cfg.OpTimeout)
			defer cancel()
			if left, err := ps.store.Remove(ctx, name, e.Client); err == nil && left && b.h.limits().doc.For(name).JoinLeave {
				ps.publishEvent(OpLeave, name, e, "published_leave")
			}
		}()
	}
	return true
}

func containsSession(list []*session, s *session) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// globMatch matches name against a glob of '*' (any run) and '?' (one
// character).
func globMatch(pattern, name string) bool {
	p, n := []rune(pattern), []rune(name)
	var match func(i, j int) bool
	match = func(i, j int) bool {
		for i < len(p) {
			switch p[i] {
			case '*':
				for k := j; k <= len(n); k++ {
					if match(i+1, k) {
						return true
					}
				}
				return false
			case '?':
				if j >= len(n) {
					return false
				}
			default:
				if j >= len(n) || n[j] != p[i] {
					return false
				}
			}
			i++
			j++
		}
		return j == len(n)
	}
	return match(0, 0)
}

// serverAPI authenticates a server API request: an API key only (or any
// request on an insecure gateway, which has no keys). It answers refusals
// itself.
func (h *Handler) serverAPI(w http.ResponseWriter, r *http.Request, call string) bool {
	p, err := h.auth.authenticate(r)
	if err != nil {
		h.ctl.calls.WithLabelValues(call, "refused").Inc()
		h.refuse(w, err)
		return false
	}
	if p.Kind != "api_key" && !(h.auth.open && p.All) {
		h.ctl.calls.WithLabelValues(call, "refused").Inc()
		h.httpError(w, &Error{Code: CodeForbidden, Message: "the server API needs an API key"})
		return false
	}
	return true
}

// ServerAPIResponse is the body of the server API's answers.
type ServerAPIResponse struct {
	// Affected is the sum of the gateways' Affected (disconnect,
	// unsubscribe).
	Affected int `json:"affected"`
	// Gateways are the answers, by gateway id.
	Gateways []GatewayAnswer `json:"gateways"`
	// Missing are the registered gateways that did not answer within
	// the timeout.
	Missing []string `json:"missing"`
	// Channels merges the gateways' channels (GET /api/channels).
	Channels map[string]int `json:"channels,omitempty"`
	// Nodes (GET /api/info).
	Nodes []NodeInfo `json:"nodes,omitempty"`
	// Registered are the gateways as registered in etcd (GET /api/info).
	Registered []discovery.GatewayInfo `json:"registered,omitempty"`
}

func (h *Handler) runServerAPI(w http.ResponseWriter, r *http.Request, call string, req controlRequest) (*ServerAPIResponse, bool) {
	ans, missing, err := h.ctl.ask(r.Context(), req)
	if err != nil {
		h.ctl.calls.WithLabelValues(call, "error").Inc()
		h.httpError(w, &Error{Code: CodeUnavailable, Message: "server API: " + err.Error()})
		return nil, false
	}
	result := "ok"
	if len(missing) > 0 {
		result = "partial"
	}
	h.ctl.calls.WithLabelValues(call, result).Inc()
	h.log.Info("ws: server API call", "call", call, "user", req.User, "client", req.Client, "channel", req.Channel, "answers", len(ans), "missing", missing)
	resp := &ServerAPIResponse{Gateways: ans, Missing: missing}
	if resp.Gateways == nil {
		resp.Gateways = []GatewayAnswer{}
	}
	for _, a := range ans {
		resp.Affected += a.Affected
	}
	return resp, true
}

func readBody(w http.ResponseWriter, r *http.Request, v any) *Error {
	b, err := io.ReadAll(io.LimitReader(r.Body, 64<<10))
	if err != nil {
		return badRequest(nil, "read body: %v", err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		return badRequest(nil, "body is not the expected JSON object: %v", err)
	}
	return nil
}

// serveDisconnect is POST /api/disconnect {"user":…} or {"client":…},
// with "reason" and "reconnect": every matching session of every gateway
// is closed with 4000 (reconnect) or 4009 (do not) and the reason.
func (h *Handler) serveDisconnect(w http.ResponseWriter, r *http.Request) {
	if !h.serverAPI(w, r, "disconnect") {
		return
	}
	var body struct {
		User, Client, Reason string
		Reconnect            bool
	}
	if e := readBody(w, r, &body); e != nil {
		h.httpError(w, e)
		return
	}
	if (body.User == "") == (body.Client == "") {
		h.httpError(w, badRequest(nil, "give one of user and client"))
		return
	}
	resp, ok := h.runServerAPI(w, r, "disconnect", controlRequest{Op: "disconnect", User: body.User, Client: body.Client, Reason: body.Reason, Reconnect: body.Reconnect})
	if ok {
		writeJSON(w, http.StatusOK, resp)
	}
}

// serveUnsubscribe is POST /api/unsubscribe {"user":…,"channel":…}.
func (h *Handler) serveUnsubscribe(w http.ResponseWriter, r *http.Request) {
	if !h.serverAPI(w, r, "unsubscribe") {
		return
	}
	var body struct{ User, Channel string }
	if e := readBody(w, r, &body); e != nil {
		h.httpError(w, e)
		return
	}
	if body.User == "" {
		h.httpError(w, badRequest(nil, "user is required"))
		return
	}
	if e := h.checkChannel(nil, body.Channel); e != nil {
		h.httpError(w, e)
		return
	}
	resp, ok := h.runServerAPI(w, r, "unsubscribe", controlRequest{Op: "unsubscribe", User: body.User, Channel: body.Channel})
	if ok {
		writeJSON(w, http.StatusOK, resp)
	}
}

// serveChannels is GET /api/channels?pattern=: the channels with a
// subscriber on some gateway, with the sum of their subscribers.
func (h *Handler) serveChannels(w http.ResponseWriter, r *http.Request) {
	if !h.serverAPI(w, r, "channels") {
		return
	}
	resp, ok := h.runServerAPI(w, r, "channels", controlRequest{Op: "channels", Pattern: r.URL.Query().Get("pattern")})
	if !ok {
		return
	}
	resp.Channels = map[string]int{}
	for i, a := range resp.Gateways {
		for name, n := range a.Channels {
			resp.Channels[name] += n
		}
		resp.Gateways[i].Channels = nil
	}
	writeJSON(w, http.StatusOK, resp)
}

// serveInfo is GET /api/info: every gateway's live counts, the gateways
// as registered, and the nodes.
func (h *Handler) serveInfo(w http.ResponseWriter, r *http.Request) {
	if !h.serverAPI(w, r, "info") {
		return
	}
	resp, ok := h.runServerAPI(w, r, "info", controlRequest{Op: "info"})
	if !ok {
		return
	}
	if gws, err := h.client.Registry().Gateways(r.Context()); err == nil {
		resp.Registered = gws
	}
	for _, n := range h.client.Nodes().Nodes {
		resp.Nodes = append(resp.Nodes, NodeInfo{ID: n.ID, Addr: n.Addr, State: string(n.State),
			StartedAt: n.StartedAt, Version: n.Version, RedisVersion: n.RedisVersion})
	}
	writeJSON(w, http.StatusOK, resp)
}
