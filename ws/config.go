package ws

import (
	"crypto"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/trace"
)

// Defaults of the limits, exported so documentation, flags and tests name
// the same numbers. Those that are cluster configuration keys equal its
// defaults (clusterconfig.DefaultGateway, DefaultNamespace; a test checks),
// which is where a gateway without overrides takes them from.
const (
	DefaultMaxFrameBytes            = 64 << 10 // 64 KiB
	DefaultMaxPublishBytes          = 32 << 10 // 32 KiB
	DefaultMaxSubscriptions         = 100
	DefaultMaxConnectionsPerSubject = 100
	DefaultMaxChannelBytes          = 128
	DefaultPublishRate              = 20 // per second
	DefaultPublishBurst             = 40
	DefaultSendQueue                = 256 // frames
	DefaultPingInterval             = 25 * time.Second
	DefaultPongTimeout              = 10 * time.Second
	DefaultWriteTimeout             = 10 * time.Second
	DefaultCloseGrace               = 2 * time.Second
	DefaultOpTimeout                = 10 * time.Second
	DefaultShutdownTimeout          = 10 * time.Second
)

// Config of a Handler. Zero means the default (for the limits the cluster
// configuration says: see below); a negative limit means no limit where the
// field says so.
type Config struct {
	// JWTSecret verifies HS256 tokens. A non-nil secret must not be empty
	// or blank (NewHandler returns ErrEmptyJWTSecret). Default: nil, no
	// HS256 tokens: without any JWT key no token is parsed at all.
	JWTSecret []byte
	// JWTPublicKey verifies RS256 tokens (an *rsa.PublicKey) or ES256,
	// ES384, ES512 tokens (an *ecdsa.PublicKey on P-256, P-384, P-521); see
	// ParsePublicKeyPEM. Default: none.
	JWTPublicKey crypto.PublicKey
	// APIKeys are bearer credentials with full access (publish and
	// subscribe on every channel), meant for backends. Default: none.
	APIKeys []string
	// Insecure lets every request in, with full access, when none of
	// JWTSecret, JWTPublicKey and APIKeys is set. Without it and without any
	// of them NewHandler fails. With any of them set, Insecure changes
	// nothing: credentials are required. Default: false.
	Insecure bool
	// AllowOrigins lists the Origin values a browser may connect from:
	// exact origins ("https://app.example.com"), a "*." wildcard for
	// subdomains ("https://*.example.com"), or "*" for any. Requests without
	// an Origin header (non-browser clients) are always allowed. Default:
	// only the gateway's own origin (the Origin's host equals Host).
	AllowOrigins []string

	// The limits below are also keys of the cluster configuration in etcd
	// (clusterconfig, `pubmesh config`), which the gateway follows live
	// through its fanout client. Zero, the default, follows the cluster
	// configuration (whose defaults are the Default* constants); a value
	// set here overrides it for this gateway, whatever the cluster says
	// (NewHandler logs each override, GET /api/config lists them).

	// MaxFrameBytes is the largest frame a client may send; a larger one
	// closes the connection with 1009. Overrides gateway.max_frame_bytes.
	// Applies to connections opened after a change. Default: the cluster
	// configuration's (64 KiB).
	MaxFrameBytes int
	// MaxPublishBytes is the largest publish data, over WebSocket (error
	// too_large) or as an HTTP body (413). Overrides the max_publish_bytes
	// of every namespace. Default: the namespace's (32 KiB).
	MaxPublishBytes int
	// MaxSubscriptions per connection (error limit). Negative: no limit.
	// Overrides gateway.max_subscriptions. A change applies to the next
	// subscribe; existing subscriptions stay, even above a lowered limit.
	// Default: the cluster configuration's (100).
	MaxSubscriptions int
	// MaxChannelBytes is the longest channel name (error bad_request), on
	// top of fanout.ValidateChannel's rules. Not in the cluster
	// configuration. Default: 128.
	MaxChannelBytes int
	// MaxConnectionsPerSubject is how many WebSocket connections one token
	// subject (sub), with any number of tokens, may hold open at once; one
	// more is refused before the upgrade with HTTP 429 (code limit). API
	// keys, clients without a credential and an insecure gateway are not
	// limited. Negative: no limit. Overrides
	// gateway.max_connections_per_subject; a change applies to the next
	// connection (open ones stay). Default: the cluster configuration's
	// (100).
	MaxConnectionsPerSubject int
	// PublishRate is how many publishes per second one token subject may
	// send, with bursts of PublishBurst (error rate_limited, HTTP 429): one
	// bucket per subject, shared by all its WebSocket connections and its
	// HTTP publishes. A WebSocket connection made with an API key, without
	// a credential or on an insecure gateway has a bucket of its own; HTTP
	// publishes without a credential share one bucket per client address;
	// those with an API key or on an insecure gateway are not limited.
	// Negative: no limit. Overrides gateway.publish_rate; a change applies
	// to the existing buckets too, at the next publish. Default: the
	// cluster configuration's (20).
	PublishRate float64
	// PublishBurst. Overrides gateway.publish_burst, like PublishRate.
	// Default: the cluster configuration's (40).
	PublishBurst int
	// SendQueue is how many frames may wait for one connection's writer.
	// When it is full the connection is closed with 4008 "slow consumer".
	// Overrides gateway.send_queue. Applies to connections opened after a
	// change. Default: the cluster configuration's (256).
	SendQueue int

	// PingInterval is how often the gateway pings an idle client.
	// Overrides gateway.ping_interval. Applies to connections opened after
	// a change. Default: the cluster configuration's (25s).
	PingInterval time.Duration
	// PongTimeout: a client that sends nothing, not even a pong, for
	// PingInterval + PongTimeout is dead and closed. Default: 10s.
	PongTimeout time.Duration
	// WriteTimeout bounds one write to a client. Default: 10s.
	WriteTimeout time.Duration
	// CloseGrace is how long a closing connection may take to deliver its
	// close frame and hear the client's. Default: 2s.
	CloseGrace time.Duration
	// OpTimeout bounds a subscribe or publish through the fanout client.
	// Default: 10s.
	OpTimeout time.Duration
	// ShutdownTimeout bounds Serve's graceful shutdown. Default: 10s.
	ShutdownTimeout time.Duration
	// PresenceTTL is how long a presence entry lives without a refresh
	// (the gateway refreshes every third of it): a crashed gateway's
	// clients leave presence within it. Default: fanout.DefaultPresenceTTL
	// (15s).
	PresenceTTL time.Duration
	// APITimeout bounds how long the server API (POST /api/disconnect,
	// /api/unsubscribe, GET /api/channels, /api/info) waits for the other
	// gateways' answers. Default: 2s.
	APITimeout time.Duration

	// WriteDelay, when positive, makes a WebSocket connection's writer,
	// woken by a frame, wait that long for more frames before it writes
	// them all at once: fewer wake-ups and system calls per frame for
	// high-rate subscribers, at the price of up to WriteDelay more
	// latency. A full batch (128 frames) does not wait. Default: 0, off:
	// the writer writes whatever is queued as soon as it wakes.
	WriteDelay time.Duration

	// Compression negotiates permessage-deflate (RFC 7692) with WebSocket
	// clients that offer it: each frame is compressed for each connection
	// that negotiated it (no context takeover), which costs CPU per
	// subscriber. Default: off.
	Compression bool

	// AdminPassword, when set, serves the admin page at /admin (admin.go):
	// an operator logs in with it and gets a session cookie. Its own
	// credential, not an API key. Default: nil, /admin is not served (404).
	AdminPassword []byte
	// AdminSessionTTL is how long an admin session cookie lasts. Default:
	// DefaultAdminSessionTTL (12h).
	AdminSessionTTL time.Duration

	// Logger. Default: slog.Default().
	Logger *slog.Logger
	// Metrics is the registry the handler registers its metrics in and
	// serves at /metrics. Pass the registry given to fanout.Config as
	// Registerer to serve both. Default: a new registry of its own.
	Metrics *prometheus.Registry
	// TracerProvider, if set, traces client publishes and message writes
	// (trace.go); StartGateway gives it to the gateway's fanout client too
	// when Fanout.TracerProvider is nil. Default: nil, tracing off, at no
	// cost.
	TracerProvider trace.TracerProvider

	// For the package's tests: the frames a resume may hold (default
	// DefaultResumeHold), and hooks into a resume.
	resumeHold int
	hooks      resumeHooks
}

// ErrNoAuth is returned by NewHandler when no credential is configured and
// Config.Insecure is false.
var ErrNoAuth = errors.New("ws: no authentication configured (set a JWT secret, a JWT public key or an API key, or Insecure)")

func (c *Config) setDefaults() error {
	if len(c.JWTSecret) == 0 && c.JWTPublicKey == nil && len(c.APIKeys) == 0 && !c.Insecure {
		return ErrNoAuth
	}
	def := func(p *int, d int) {
		if *p == 0 {
			*p = d
		}
	}
	defDur := func(p *time.Duration, d time.Duration) {
		if *p == 0 {
			*p = d
		}
	}
	// The limits of the cluster configuration keep their zero: it means
	// "follow the cluster" (see liveconfig.go).
	def(&c.MaxChannelBytes, DefaultMaxChannelBytes)
	def(&c.resumeHold, DefaultResumeHold)
	defDur(&c.PongTimeout, DefaultPongTimeout)
	defDur(&c.WriteTimeout, DefaultWriteTimeout)
	defDur(&c.CloseGrace, DefaultCloseGrace)
	defDur(&c.OpTimeout, DefaultOpTimeout)
	defDur(&c.ShutdownTimeout, DefaultShutdownTimeout)
	defDur(&c.APITimeout, 2*time.Second)
	defDur(&c.AdminSessionTTL, DefaultAdminSessionTTL)
	if c.AdminPassword != nil && len(strings.TrimSpace(string(c.AdminPassword))) == 0 {
		return errors.New("ws: the admin password is empty")
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Metrics == nil {
		c.Metrics = prometheus.NewRegistry()
	}
	for name, v := range map[string]int{"MaxFrameBytes": c.MaxFrameBytes, "MaxPublishBytes": c.MaxPublishBytes, "MaxChannelBytes": c.MaxChannelBytes, "SendQueue": c.SendQueue, "PublishBurst": c.PublishBurst} {
		if v < 0 {
			return fmt.Errorf("ws: %s must not be negative", name)
		}
	}
	for _, d := range []time.Duration{c.PingInterval, c.PongTimeout, c.WriteTimeout, c.CloseGrace, c.OpTimeout, c.ShutdownTimeout, c.WriteDelay} {
		if d < 0 {
			return errors.New("ws: durations must not be negative")
		}
	}
	return nil
}
