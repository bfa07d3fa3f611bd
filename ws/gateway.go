package ws

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pubmesh/pubmesh/fanout"
	"github.com/pubmesh/pubmesh/internal/hostaddr"
)

// GatewayConfig is a whole gateway: its own fanout client and a Handler on
// it, served on one listener. `pubmesh gateway`, `pubmesh dev`, the
// benchmark and the tests all build their gateway with StartGateway, so
// they run the same thing.
type GatewayConfig struct {
	// Fanout configures the gateway's fanout client (etcd, cluster, id,
	// credentials, metrics). Its Overflow is always fanout.Block: the
	// hub's pumps never wait for a client (a full client queue closes that
	// client), so Block only waits when the gateway is short of CPU, and a
	// burst then backs up into Redis's output buffer instead of being
	// dropped at the fanout buffer. Fanout.Registerer defaults to
	// Handler.Metrics when that is set, so /metrics serves both.
	Fanout fanout.Config
	// Handler configures the WebSocket and HTTP side. Handler.Metrics
	// defaults to a new registry, which the fanout client then shares.
	Handler Config
	// Listener, if set, is served (and closed on Close). Otherwise Listen
	// is bound. Default: Listen "127.0.0.1:8080".
	Listener net.Listener
	Listen   string
	// TLS, if set, serves HTTPS and WSS. Default: plain HTTP and WS.
	TLS *tls.Config
	// PublicURL is the base URL other gateways and `pubmesh gateways`
	// show for this gateway (its registry key), such as a balancer's
	// https://push.example.com/. Default: URL(), except that a gateway
	// listening on every address (0.0.0.0, ::) registers an address of
	// this machine other machines can dial (hostaddr.Reachable), not the
	// unspecified one.
	PublicURL string
}

// Gateway is a running gateway. Close stops it.
type Gateway struct {
	client *fanout.Client
	h      *Handler
	url    string
	cancel context.CancelFunc
	served chan error // Serve's result

	once     sync.Once
	closeErr error
}

// StartGateway connects a fanout client (waiting for etcd as fanout.New
// does, until ctx ends), builds a Handler on it and serves it. The port is
// bound first, so a taken port fails before anything else starts. ctx
// bounds the start only: the gateway runs until Close.
func StartGateway(ctx context.Context, cfg GatewayConfig) (*Gateway, error) {
	l := cfg.Listener
	if l == nil {
		addr := cfg.Listen
		if addr == "" {
			addr = "127.0.0.1:8080"
		}
		var err error
		if l, err = net.Listen("tcp", addr); err != nil {
			return nil, fmt.Errorf("ws: listen on %s: %w", addr, err)
		}
	}
	if cfg.Handler.Metrics == nil {
		cfg.Handler.Metrics = prometheus.NewRegistry()
	}
	fc := cfg.Fanout
	fc.Overflow = fanout.Block
	if fc.Registerer == nil {
		fc.Registerer = cfg.Handler.Metrics
	}
	if fc.Logger == nil {
		fc.Logger = cfg.Handler.Logger
	}
	if fc.TracerProvider == nil {
		fc.TracerProvider = cfg.Handler.TracerProvider
	}
	client, err := fanout.New(ctx, fc)
	if err != nil {
		l.Close()
		return nil, err
	}
	h, err := NewHandler(client, cfg.Handler)
	if err != nil {
		l.Close()
		client.Close()
		return nil, err
	}
	scheme := "http"
	if cfg.TLS != nil {
		l = tls.NewListener(l, cfg.TLS)
		scheme = "https"
	}
	sctx, cancel := context.WithCancel(context.Background())
	g := &Gateway{client: client, h: h, cancel: cancel, served: make(chan error, 1),
		url: scheme + "://" + l.Addr().String() + "/"}
	go func() { g.served <- h.Serve(sctx, l) }()
	public := cfg.PublicURL
	if public == "" {
		public = publicURL(scheme, l.Addr())
	}
	if err := h.RegisterGateway(ctx, public); err != nil {
		h.log.Warn("ws: gateway not registered in etcd yet, retrying in the background", "err", err)
	}
	h.log.Info("gateway serving", "url", g.url, "websocket", g.WebSocketURL())
	return g, nil
}

// publicURL is the base URL a gateway listening on addr registers when
// none is given: addr itself, unless it is every address (0.0.0.0 or ::),
// which no other machine can dial; then this machine's reachable address.
func publicURL(scheme string, addr net.Addr) string {
	host, port, err := net.SplitHostPort(addr.String())
	if err == nil && hostaddr.Unspecified(host) {
		if h := hostaddr.Default(); h != "" {
			host = h
		}
	}
	return scheme + "://" + net.JoinHostPort(host, port) + "/"
}

// URL is the gateway's base URL, such as "http://127.0.0.1:8080/".
func (g *Gateway) URL() string { return g.url }

// WebSocketURL is where WebSocket clients connect, such as
// "ws://127.0.0.1:8080/ws".
func (g *Gateway) WebSocketURL() string {
	if len(g.url) > 5 && g.url[:5] == "https" {
		return "wss" + g.url[5:] + "ws"
	}
	return "ws" + g.url[4:] + "ws"
}

// Client is the gateway's fanout client.
func (g *Gateway) Client() *fanout.Client { return g.client }

// Handler is the gateway's Handler.
func (g *Gateway) Handler() *Handler { return g.h }

// Close closes every WebSocket client with 1001 (within the Handler's
// ShutdownTimeout), stops serving, then closes the fanout client. Later
// calls return the first call's result.
func (g *Gateway) Close() error {
	g.once.Do(func() {
		start := time.Now()
		g.cancel()
		err := <-g.served
		cerr := g.client.Close()
		if errors.Is(cerr, fanout.ErrClosed) {
			cerr = nil // closed by its user already
		}
		g.closeErr = errors.Join(err, cerr)
		g.h.log.Info("gateway stopped", "took", time.Since(start).Round(time.Millisecond))
	})
	return g.closeErr
}
