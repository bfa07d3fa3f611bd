package ws

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/pubmesh/pubmesh/fanout"
)

// ListenAndServe runs a gateway on client at addr until ctx is done, then
// shuts it down gracefully (see Handler.Serve). It does not close client.
//
//	err := ws.ListenAndServe(ctx, "127.0.0.1:8080", client, ws.Config{Insecure: true})
func ListenAndServe(ctx context.Context, addr string, client *fanout.Client, cfg Config) error {
	h, err := NewHandler(client, cfg)
	if err != nil {
		return err
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("ws: listen: %w", err)
	}
	return h.Serve(ctx, l)
}

// Serve serves h on l until ctx is done or serving fails. Then it stops
// accepting, closes every WebSocket with 1001, lets HTTP requests in
// flight finish, all within ShutdownTimeout, and closes l. It returns nil
// after a clean shutdown.
func (h *Handler) Serve(ctx context.Context, l net.Listener) error {
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		// Bounds a slow HTTP request (a publish body, /metrics); Upgrade
		// clears the deadlines of WebSocket connections, which have their
		// own (PingInterval, PongTimeout, WriteTimeout).
		ReadTimeout:  30 * time.Second,
		WriteTimeout: 30 * time.Second,
		IdleTimeout:  2 * time.Minute,
		ErrorLog:     slog.NewLogLogger(h.log.Handler(), slog.LevelDebug),
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(l) }()
	var serveErr error
	select {
	case <-ctx.Done():
	case serveErr = <-errc:
	}
	sctx, cancel := context.WithTimeout(context.Background(), h.cfg.ShutdownTimeout)
	defer cancel()
	wsErr := make(chan error, 1)
	go func() { wsErr <- h.Shutdown(sctx) }()
	err := srv.Shutdown(sctx)
	if err != nil {
		srv.Close()
	}
	err = errors.Join(err, <-wsErr)
	if serveErr != nil && !errors.Is(serveErr, http.ErrServerClosed) {
		return fmt.Errorf("ws: serve: %w", serveErr)
	}
	if err != nil {
		return fmt.Errorf("ws: shutdown: %w", err)
	}
	return nil
}
