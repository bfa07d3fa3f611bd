// Package embedetcd runs a single-member etcd server inside the process, for
// `pubmesh dev` and for tests. It is the real etcd server
// (go.etcd.io/etcd/server/v3/embed), not a fake.
package embedetcd

import (
	"errors"
	"fmt"
	"net/url"
	"os"
	"sync"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"

	"github.com/pubmesh/pubmesh/internal/freeport"
)

// Config says where the server listens and keeps its data.
type Config struct {
	// ClientAddr is host:port for clients. Default: a free port on 127.0.0.1.
	ClientAddr string
	// PeerAddr is host:port for the peer URL. Default: a free port on 127.0.0.1.
	PeerAddr string
	// Dir holds the data. Default: a new temporary directory, removed by Close.
	Dir string
	// Name of the member. Default: "pubmesh-dev".
	Name string
	// StartTimeout bounds how long Start waits for the server to serve.
	// Default: 30s.
	StartTimeout time.Duration
	// Logger receives etcd's own logs. Default: none.
	Logger *zap.Logger
}

// Server is a running embedded etcd. Stop and Start may be called to
// simulate an etcd outage; Close stops it for good.
type Server struct {
	cfg    Config
	ownDir bool
	mu     sync.Mutex // guards etcd
	etcd   *embed.Etcd
	closed bool
}

// Start starts a server and waits until it serves clients.
func Start(cfg Config) (*Server, error) {
	if cfg.Name == "" {
		cfg.Name = "pubmesh-dev"
	}
	if cfg.StartTimeout == 0 {
		cfg.StartTimeout = 30 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	s := &Server{cfg: cfg}
	if s.cfg.Dir == "" {
		dir, err := os.MkdirTemp("", "pubmesh-etcd-")
		if err != nil {
			return nil, fmt.Errorf("embedetcd: %w", err)
		}
		s.cfg.Dir, s.ownDir = dir, true
	}
	for _, a := range []*string{&s.cfg.ClientAddr, &s.cfg.PeerAddr} {
		if *a == "" {
			p, err := freeport.Get()
			if err != nil {
				return nil, err
			}
			*a = fmt.Sprintf("127.0.0.1:%d", p)
		}
	}
	if err := s.Restart(); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// Endpoint is the client URL, e.g. "http://127.0.0.1:2379".
func (s *Server) Endpoint() string { return "http://" + s.cfg.ClientAddr }

// Dir is the data directory.
func (s *Server) Dir() string { return s.cfg.Dir }

// Restart starts the server again after Stop, on the same ports and data.
func (s *Server) Restart() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return errors.New("embedetcd: closed")
	}
	if s.etcd != nil {
		return nil
	}
	ec := embed.NewConfig()
	ec.Name = s.cfg.Name
	ec.Dir = s.cfg.Dir
	ec.ZapLoggerBuilder = embed.NewZapLoggerBuilder(s.cfg.Logger)
	ec.LogLevel = "error"
	cu, _ := url.Parse("http://" + s.cfg.ClientAddr)
	pu, _ := url.Parse("http://" + s.cfg.PeerAddr)
	ec.ListenClientUrls, ec.AdvertiseClientUrls = []url.URL{*cu}, []url.URL{*cu}
	ec.ListenPeerUrls, ec.AdvertisePeerUrls = []url.URL{*pu}, []url.URL{*pu}
	ec.InitialCluster = ec.InitialClusterFromName(ec.Name)
	// Small and quick: a dev cluster and tests want fast elections and no
	// background metrics listener.
	ec.TickMs = 50
	ec.ElectionMs = 500
	ec.ListenMetricsUrls = nil
	e, err := embed.StartEtcd(ec)
	if err != nil {
		return fmt.Errorf("embedetcd: start on %s: %w", s.cfg.ClientAddr, err)
	}
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(s.cfg.StartTimeout):
		e.Close()
		return fmt.Errorf("embedetcd: not ready after %s", s.cfg.StartTimeout)
	case err := <-e.Err():
		e.Close()
		return fmt.Errorf("embedetcd: %w", err)
	}
	s.etcd = e
	return nil
}

// Stop stops the server but keeps its data, so Restart can bring it back.
func (s *Server) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.etcd != nil {
		s.etcd.Close()
		s.etcd = nil
	}
}

// Close stops the server and removes its data directory if Start made it.
// It is safe to call more than once.
func (s *Server) Close() {
	s.Stop()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	s.closed = true
	if s.ownDir {
		os.RemoveAll(s.cfg.Dir)
	}
}
