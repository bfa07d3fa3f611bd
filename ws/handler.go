package ws

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"

	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.opentelemetry.io/otel/trace"

	"github.com/pubmesh/pubmesh/fanout"
)

// Handler is the gateway: an http.Handler serving
//
//	GET  /ws                       WebSocket clients (docs/protocol.md)
//	GET  /sse                      Server-Sent Events (EventSource) clients
//	GET  /api/stream/{channel}     newline-delimited JSON messages of a channel
//	GET  /api/stream?channel=&pattern=  the same for several channels and patterns
//	POST /api/publish/{channel}    publish the JSON body
//	GET  /api/history/{channel}    the channel's history (docs/history.md)
//	GET  /api/nodes                the nodes as the gateway sees them
//	GET  /api/config               the cluster configuration the gateway runs, and its overrides
//	GET  /api/presence/{channel}   who is subscribed to a presence channel, cluster-wide (…/stats: the counts)
//	POST /api/disconnect           server API (API key): close sessions of a subject or a client, on every gateway
//	POST /api/unsubscribe          server API: unsubscribe a subject from a channel, on every gateway
//	GET  /api/channels             server API: active channels cluster-wide with subscriber counts
//	GET  /api/info                 server API: the gateways, their connections, the nodes
//	GET  /healthz                  200 while this gateway is subscribed on and can publish to a ready node
//	GET  /metrics                  Prometheus metrics
//	GET  /                         the demo page
//	GET  /pubmesh.js               the JavaScript client
//	GET  /pubmesh-presence.js      its presence part (pubmesh.js imports it)
//	GET  /admin, /admin/api/...    the admin page, with Config.AdminPassword only (admin.go)
//
// on top of one fanout client, whose cluster configuration it follows (see
// Config). It is safe for concurrent use. Shutdown
// closes its sessions (WebSocket connections and streams); the fanout
// client is the caller's to close, after Shutdown.
type Handler struct {
	client   *fanout.Client
	cfg      Config
	auth     *authenticator
	metrics  *metrics
	hub      *hub
	subjects *subjects // publish buckets and connection counts per token subject
	// anonPublishers are the publish buckets of HTTP publishes without a
	// credential, per client address.
	anonPublishers *subjects
	live           liveConfig
	pres           *presenceState // presence and join/leave (presence.go)
	ctl            *control       // the server API's control channel (serverapi.go)
	admin          *admin         // the admin page (admin.go); nil when off
	regMu          sync.Mutex     // guards greg
	greg           *gatewayRegistry
	mux            *http.ServeMux
	up             websocket.Upgrader
	log            *slog.Logger
	tracer         trace.Tracer // nil: tracing off (trace.go)

	ctx    context.Context // canceled by Shutdown
	cancel context.CancelFunc

	mu       sync.Mutex // guards sessions, shutdown
	sessions map[*session]struct{}
	shutdown bool
	running  sync.WaitGroup // sessions being served; Add only under mu while !shutdown
	done     chan struct{}  // closed when Shutdown has closed every connection
}

var _ http.Handler = (*Handler)(nil)

// NewHandler returns a gateway on client. It fails with ErrNoAuth when cfg
// configures no credential and is not Insecure. cfg is copied. The handler
// follows client's cluster configuration (fanout.Client.ClusterConfig)
// from a goroutine of its own until Shutdown.
func NewHandler(client *fanout.Client, cfg Config) (*Handler, error) {
	if client == nil {
		return nil, errors.New("ws: nil fanout client")
	}
	cfg.APIKeys = append([]string(nil), cfg.APIKeys...)
	cfg.AllowOrigins = append([]string(nil), cfg.AllowOrigins...)
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	auth, err := newAuthenticator(&cfg)
	if err != nil {
		return nil, err
	}
	m, err := newMetrics(cfg.Metrics)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	l := effectiveLimits(&cfg, client.ClusterConfig())
	h := &Handler{
		client: client, cfg: cfg, auth: auth, metrics: m, log: cfg.Logger, tracer: newTracer(cfg.TracerProvider),
		subjects:       newSubjects(l.publishRate, l.publishBurst, l.maxConnsPerSubject, maxLimitedSubjects),
		anonPublishers: newSubjects(l.publishRate, l.publishBurst, -1, maxLimitedSubjects),
		ctx:            ctx, cancel: cancel,
		sessions: make(map[*session]struct{}),
		done:     make(chan struct{}),
	}
	h.live.cur.Store(l)
	if auth.open {
		h.log.Warn("ws: INSECURE: no authentication, every client may subscribe and publish to every channel")
	}
	overrides := cfg.overrides()
	for _, o := range overrides {
		h.log.Info("config: flag overrides the cluster configuration", "key", o.key, "value", o.value)
	}
	m.overrides.Set(float64(len(overrides)))
	h.hub = newHub(h, ctx)
	h.up = websocket.Upgrader{
		// Origin is checked before Upgrade (checkOrigin), to count it.
		CheckOrigin: func(*http.Request) bool { return true },
		// Idle connections hold no write buffer (the writer frames
		// messages itself, frame.go, and gorilla's buffer comes from the
		// pool for the other frames), and a small read buffer of their
		// own instead of net/http's 4 KiB one: client frames are small,
		// and a larger one is read past the buffer.
		WriteBufferPool:   &sync.Pool{},
		ReadBufferSize:    readBufferSize,
		HandshakeTimeout:  cfg.WriteTimeout,
		EnableCompression: cfg.Compression,
	}
	h.mux = http.NewServeMux()
	h.mux.HandleFunc("GET /ws", h.serveWS)
	h.mux.HandleFunc("GET /sse", h.serveSSE)
	h.mux.HandleFunc("GET /api/stream/{channel...}", h.serveStreamHTTP)
	h.mux.HandleFunc("GET /api/stream", h.serveStreamQuery)
	h.mux.HandleFunc("POST /api/publish/{channel...}", h.servePublish)
	h.mux.HandleFunc("GET /api/history/{channel...}", h.serveHistory)
	h.mux.HandleFunc("GET /api/nodes", h.serveNodes)
	h.mux.HandleFunc("GET /api/config", h.serveConfig)
	h.mux.HandleFunc("GET /api/presence/{channel...}", h.servePresence)
	h.mux.HandleFunc("POST /api/disconnect", h.serveDisconnect)
	h.mux.HandleFunc("POST /api/unsubscribe", h.serveUnsubscribe)
	h.mux.HandleFunc("GET /api/channels", h.serveChannels)
	h.mux.HandleFunc("GET /api/info", h.serveInfo)
	h.mux.HandleFunc("GET /healthz", h.serveHealth)
	h.mux.Handle("GET /metrics", promhttp.HandlerFor(cfg.Metrics, promhttp.HandlerOpts{Registry: cfg.Metrics}))
	h.mux.HandleFunc("GET /{$}", serveStatic("index.html", "text/html; charset=utf-8"))
	h.mux.HandleFunc("GET /pubmesh.js", serveStatic("pubmesh.js", "text/javascript; charset=utf-8"))
	h.mux.HandleFunc("GET /pubmesh-presence.js", serveStatic("pubmesh-presence.js", "text/javascript; charset=utf-8"))
	if err := h.startAdmin(); err != nil {
		cancel()
		return nil, err
	}
	if err := h.startCluster(); err != nil {
		cancel()
		return nil, err
	}
	h.live.followed = make(chan struct{})
	go h.followConfig()
	return h, nil
}

// ServeHTTP routes r.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) { h.mux.ServeHTTP(w, r) }

// checkOrigin allows requests without Origin (not from a browser), the
// gateway's own origin, and AllowOrigins.
// readBufferSize is a WebSocket connection's read buffer.
const readBufferSize = 512

func (h *Handler) checkOrigin(r *http.Request) bool {
	origin := r.Header.Get("Origin")
	if origin == "" {
		return true
	}
	u, err := url.Parse(origin)
	if err != nil || u.Host == "" {
		return false
	}
	if len(h.cfg.AllowOrigins) == 0 {
		return strings.EqualFold(u.Host, r.Host)
	}
	for _, a := range h.cfg.AllowOrigins {
		if originMatches(a, origin, u) {
			return true
		}
	}
	return false
}

func originMatches(allowed, origin string, u *url.URL) bool {
	if allowed == "*" || strings.EqualFold(allowed, origin) {
		return true
	}
	// "https://*.example.com" matches subdomains of example.com.
	scheme, rest, ok := strings.Cut(allowed, "://*.")
	return ok && strings.EqualFold(scheme, u.Scheme) && strings.HasSuffix(strings.ToLower(u.Host), "."+strings.ToLower(rest))
}

// refuse answers an authentication failure with 401.
func (h *Handler) refuse(w http.ResponseWriter, err error) {
	reason := "invalid"
	var ae *authError
	if errors.As(err, &ae) {
		reason = ae.reason
	}
	h.metrics.authFailures.WithLabelValues(reason).Inc()
	w.Header().Set("WWW-Authenticate", `Bearer realm="pubmesh"`)
	h.metrics.errors.WithLabelValues(CodeUnauthorized).Inc()
	writeError(w, http.StatusUnauthorized, &Error{Code: CodeUnauthorized, Message: err.Error()})
}

// Shutdown stops accepting sessions, sends every client a close frame
// (1001, "gateway shutting down"; a stream's close event) and waits until they are
// gone or ctx is done, when it drops the rest. Later calls wait for the
// first to finish and return nil. The fanout client is not closed.
func (h *Handler) Shutdown(ctx context.Context) error {
	h.mu.Lock()
	first := !h.shutdown
	h.shutdown = true
	sessions := make([]*session, 0, len(h.sessions))
	for s := range h.sessions {
		sessions = append(sessions, s)
	}
	h.mu.Unlock()
	if !first {
		select {
		case <-h.done:
		case <-ctx.Done():
		}
		return nil
	}
	defer close(h.done)
	defer h.stopCluster()
	h.cancel()
	<-h.live.followed
	for _, s := range sessions {
		s.close(CloseGoingAway, "gateway shutting down")
	}
	waited := make(chan struct{})
	go func() { h.running.Wait(); close(waited) }()
	select {
	case <-waited:
		return nil
	case <-ctx.Done():
	}
	// Out of time: close the sockets; the connections end at once.
	h.mu.Lock()
	for s := range h.sessions {
		s.abort()
	}
	h.mu.Unlock()
	<-waited
	return ctx.Err()
}

// Metrics is the registry served at /metrics.
func (h *Handler) Metrics() *prometheus.Registry { return h.cfg.Metrics }
