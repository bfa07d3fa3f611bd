// Package embedetcd runs a single-member etcd server inside the process, for
// `pubmesh dev` and for tests. It is the real etcd server
// (go.etcd.io/etcd/server/v3/embed), not a fake.
package embedetcd

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"os"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
	"golang.org/x/crypto/bcrypt"

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
	// TLS, if set, makes the server serve clients (and its peer URL) over
	// TLS only; Endpoint is then https://. Default: none (plain http).
	TLS *TLS
	// RootPassword, if set, makes Start create the user root (role root)
	// with this password and enable authentication. Data kept from an
	// earlier run must have the same root password. Default: none (no
	// authentication).
	RootPassword string
}

// TLS is the server's certificate and, optionally, the CA its clients'
// certificates must be signed by.
type TLS struct {
	CertFile, KeyFile string
	// ClientCAFile, if set, requires a client certificate signed by it
	// (mutual TLS). Default: none (any client may connect).
	ClientCAFile string
}

func (t *TLS) info() transport.TLSInfo {
	return transport.TLSInfo{
		CertFile: t.CertFile, KeyFile: t.KeyFile,
		TrustedCAFile: t.ClientCAFile, ClientCertAuth: t.ClientCAFile != "",
	}
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
	if cfg.RootPassword != "" {
		if err := s.enableAuth(); err != nil {
			s.Close()
			return nil, err
		}
	}
	return s, nil
}

// enableAuth creates root with the root role and turns authentication on,
// unless it is on already, in which case it checks the root password.
func (s *Server) enableAuth() error {
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.StartTimeout)
	defer cancel()
	ccfg := clientv3.Config{Endpoints: []string{s.Endpoint()}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()}
	if s.cfg.TLS != nil {
		// Connect as a client: the server's own certificate allows client
		// authentication (devcerts makes it so), and it is trusted by the
		// client CA when one is set. Server verification is pinned to it.
		tc, err := s.selfClientTLS()
		if err != nil {
			return err
		}
		ccfg.TLS = tc
	}
	cli, err := clientv3.New(ccfg)
	if err != nil {
		return fmt.Errorf("embedetcd: enable auth: %w", err)
	}
	defer cli.Close()
	st, err := cli.AuthStatus(ctx)
	if err != nil {
		return fmt.Errorf("embedetcd: auth status: %w", err)
	}
	if st.Enabled {
		ccfg.Username, ccfg.Password = "root", s.cfg.RootPassword
		root, err := clientv3.New(ccfg)
		if err == nil {
			_, err = root.Get(ctx, "/pubmesh-ping", clientv3.WithCountOnly())
			root.Close()
		}
		if err != nil {
			return fmt.Errorf("embedetcd: authentication is enabled in %s and the root password does not work: %w", s.cfg.Dir, err)
		}
		return nil
	}
	if _, err := cli.RoleAdd(ctx, "root"); err != nil && !errors.Is(err, rpctypes.ErrRoleAlreadyExist) {
		return fmt.Errorf("embedetcd: add role root: %w", err)
	}
	if _, err := cli.UserAdd(ctx, "root", s.cfg.RootPassword); errors.Is(err, rpctypes.ErrUserAlreadyExist) {
		_, err = cli.UserChangePassword(ctx, "root", s.cfg.RootPassword)
		if err != nil {
			return fmt.Errorf("embedetcd: set root password: %w", err)
		}
	} else if err != nil {
		return fmt.Errorf("embedetcd: add user root: %w", err)
	}
	if _, err := cli.UserGrantRole(ctx, "root", "root"); err != nil {
		return fmt.Errorf("embedetcd: grant root: %w", err)
	}
	if _, err := cli.AuthEnable(ctx); err != nil {
		return fmt.Errorf("embedetcd: enable auth: %w", err)
	}
	return nil
}

// selfClientTLS connects to this server: it trusts exactly the server's
// certificate and presents it as a client certificate.
func (s *Server) selfClientTLS() (*tls.Config, error) {
	pair, err := tls.LoadX509KeyPair(s.cfg.TLS.CertFile, s.cfg.TLS.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("embedetcd: %w", err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(pair.Leaf)
	if s.cfg.TLS.ClientCAFile != "" {
		b, err := os.ReadFile(s.cfg.TLS.ClientCAFile)
		if err != nil {
			return nil, fmt.Errorf("embedetcd: %w", err)
		}
		roots.AppendCertsFromPEM(b)
	}
	return &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12}, nil
}

// Endpoint is the client URL, e.g. "http://127.0.0.1:2379", or https://
// with TLS.
func (s *Server) Endpoint() string { return s.scheme() + "://" + s.cfg.ClientAddr }

func (s *Server) scheme() string {
	if s.cfg.TLS != nil {
		return "https"
	}
	return "http"
}

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
	cu, _ := url.Parse(s.scheme() + "://" + s.cfg.ClientAddr)
	pu, _ := url.Parse(s.scheme() + "://" + s.cfg.PeerAddr)
	if s.cfg.TLS != nil {
		ec.ClientTLSInfo = s.cfg.TLS.info()
		ec.PeerTLSInfo = s.cfg.TLS.info()
	}
	ec.ListenClientUrls, ec.AdvertiseClientUrls = []url.URL{*cu}, []url.URL{*cu}
	ec.ListenPeerUrls, ec.AdvertisePeerUrls = []url.URL{*pu}, []url.URL{*pu}
	ec.InitialCluster = ec.InitialClusterFromName(ec.Name)
	// Small and quick: a dev cluster and tests want fast elections and no
	// background metrics listener.
	// The root password is a long random one (pubmesh dev --secure), so
	// bcrypt's cost, which slows the guessing of weak passwords, buys
	// nothing; the default cost makes each login take 100 ms (seconds under
	// the race detector).
	ec.BcryptCost = uint(bcrypt.MinCost)
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

// Shutdown is Close bounded by ctx, for a process about to exit. etcd waits
// up to its request timeout (~6 s here) for outside clients' watch streams
// to end before it stops; Shutdown returns ctx.Err() when ctx ends first and
// leaves the close running. Nothing committed is lost by exiting then: etcd
// syncs its WAL on every commit and recovers from a stop at any point.
func (s *Server) Shutdown(ctx context.Context) error {
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.Close()
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
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
