package ws

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// Claims are the JWT claims the gateway reads. Subject and ExpiresAt (sub,
// exp) come from the registered claims; exp is required.
type Claims struct {
	jwt.RegisteredClaims
	// Subscribe lists the channel globs the bearer may subscribe to.
	Subscribe []string `json:"subscribe,omitempty"`
	// Publish lists the channel globs the bearer may publish to.
	Publish []string `json:"publish,omitempty"`
}

// Principal is who a request or connection acts as.
type Principal struct {
	// Subject is the token's sub, "api-key", or "anonymous".
	Subject string
	// Kind is "jwt", "api_key" or "anonymous".
	Kind string
	// All grants every channel (API keys, and everyone on an insecure
	// gateway). Otherwise Subscribe and Publish are globs.
	All       bool
	Subscribe []string
	Publish   []string
	// ExpiresAt is the token's expiry; zero for API keys and anonymous.
	ExpiresAt time.Time
}

// CanSubscribe reports whether p may subscribe to channel.
func (p *Principal) CanSubscribe(channel string) bool {
	return p.All || matchAny(p.Subscribe, channel)
}

// CanPublish reports whether p may publish to channel.
func (p *Principal) CanPublish(channel string) bool {
	return p.All || matchAny(p.Publish, channel)
}

func matchAny(globs []string, name string) bool {
	for _, g := range globs {
		if MatchGlob(g, name) {
			return true
		}
	}
	return false
}

// MatchGlob reports whether name matches pattern, where '*' matches any run
// of bytes (dots included, so "news.*" matches "news.eu.fr" but not
// "news") and every other byte matches itself. "*" alone matches every
// channel.
func MatchGlob(pattern, name string) bool {
	// Iterative wildcard match with one backtrack point: linear in practice,
	// O(len(pattern)*len(name)) at worst, never exponential.
	p, n := 0, 0
	star, mark := -1, 0
	for n < len(name) {
		switch {
		case p < len(pattern) && pattern[p] == '*':
			star, mark = p, n
			p++
		case p < len(pattern) && pattern[p] == name[n]:
			p++
			n++
		case star >= 0:
			p = star + 1
			mark++
			n = mark
		default:
			return false
		}
	}
	for p < len(pattern) && pattern[p] == '*' {
		p++
	}
	return p == len(pattern)
}

// authError is why a request was refused; reason labels the metric.
type authError struct {
	reason string // missing, invalid, expired
	err    error
}

func (e *authError) Error() string { return e.err.Error() }
func (e *authError) Unwrap() error { return e.err }

// ErrEmptyJWTSecret is returned by NewHandler when Config.JWTSecret is set
// but empty or blank: such a secret would let anyone sign tokens.
var ErrEmptyJWTSecret = errors.New("ws: JWT secret is empty: set a non-empty secret, or leave JWTSecret nil for no JWTs")

var errNoCredential = errors.New("ws: missing credential: send Authorization: Bearer <token> or ?token=")

// authenticator checks bearer credentials. It is read-only after
// newAuthenticator and safe for concurrent use.
type authenticator struct {
	open bool // no credential configured and Insecure: everyone is in
	// jwt is whether a JWT key is configured; without one no token is
	// ever parsed, whatever its header says.
	jwt     bool
	secret  []byte
	pub     crypto.PublicKey
	apiKeys [][sha256.Size]byte
	parser  *jwt.Parser
}

func newAuthenticator(cfg *Config) (*authenticator, error) {
	a := &authenticator{pub: cfg.JWTPublicKey}
	var methods []string
	if cfg.JWTSecret != nil {
		// An empty secret is a key anyone can sign with: refuse it rather
		// than read it as "no secret".
		if len(bytes.TrimSpace(cfg.JWTSecret)) == 0 {
			return nil, ErrEmptyJWTSecret
		}
		a.secret = cfg.JWTSecret
		methods = append(methods, jwt.SigningMethodHS256.Alg())
	}
	switch k := cfg.JWTPublicKey.(type) {
	case nil:
	case *rsa.PublicKey:
		methods = append(methods, jwt.SigningMethodRS256.Alg())
	case *ecdsa.PublicKey:
		alg, err := ecdsaAlg(k.Curve)
		if err != nil {
			return nil, err
		}
		methods = append(methods, alg)
	default:
		return nil, fmt.Errorf("ws: unsupported JWT public key type %T (want RSA or ECDSA)", k)
	}
	for _, k := range cfg.APIKeys {
		if k == "" {
			return nil, errors.New("ws: empty API key")
		}
		a.apiKeys = append(a.apiKeys, sha256.Sum256([]byte(k)))
	}
	a.jwt = len(methods) > 0
	a.open = !a.jwt && len(a.apiKeys) == 0 && cfg.Insecure
	// WithValidMethods refuses alg "none" and any algorithm the key was
	// not meant for (an HS256 token "signed" with a public RSA key). The
	// list is never empty where the parser is used: an empty list would
	// allow every algorithm.
	if a.jwt {
		a.parser = jwt.NewParser(jwt.WithValidMethods(methods), jwt.WithExpirationRequired())
	}
	return a, nil
}

func ecdsaAlg(c elliptic.Curve) (string, error) {
	switch c {
	case elliptic.P256():
		return jwt.SigningMethodES256.Alg(), nil
	case elliptic.P384():
		return jwt.SigningMethodES384.Alg(), nil
	case elliptic.P521():
		return jwt.SigningMethodES512.Alg(), nil
	}
	return "", errors.New("ws: unsupported ECDSA curve (want P-256, P-384 or P-521)")
}

// bearer returns the credential of r: the Authorization: Bearer header, or
// else the token query parameter (browsers cannot set headers on a
// WebSocket).
func bearer(r *http.Request) string {
	if h := r.Header.Get("Authorization"); h != "" {
		if scheme, tok, ok := strings.Cut(h, " "); ok && strings.EqualFold(scheme, "Bearer") {
			return strings.TrimSpace(tok)
		}
		return ""
	}
	return r.URL.Query().Get("token")
}

// authenticate returns r's principal or an *authError.
func (a *authenticator) authenticate(r *http.Request) (*Principal, error) {
	if a.open {
		return &Principal{Subject: "anonymous", Kind: "anonymous", All: true}, nil
	}
	return a.check(bearer(r))
}

func (a *authenticator) check(cred string) (*Principal, error) {
	if cred == "" {
		return nil, &authError{reason: "missing", err: errNoCredential}
	}
	if len(a.apiKeys) > 0 {
		sum := sha256.Sum256([]byte(cred))
		found := 0
		for i := range a.apiKeys {
			found |= subtle.ConstantTimeCompare(sum[:], a.apiKeys[i][:])
		}
		if found == 1 {
			return &Principal{Subject: "api-key", Kind: "api_key", All: true}, nil
		}
	}
	if !a.jwt {
		return nil, &authError{reason: "invalid", err: errors.New("ws: invalid API key")}
	}
	var c Claims
	_, err := a.parser.ParseWithClaims(cred, &c, a.key)
	if err != nil {
		reason := "invalid"
		if errors.Is(err, jwt.ErrTokenExpired) {
			reason = "expired"
		}
		return nil, &authError{reason: reason, err: fmt.Errorf("ws: token refused: %w", err)}
	}
	p := &Principal{Subject: c.Subject, Kind: "jwt", Subscribe: c.Subscribe, Publish: c.Publish}
	if c.ExpiresAt != nil {
		p.ExpiresAt = c.ExpiresAt.Time
	}
	return p, nil
}

// key picks the verification key by the token's algorithm family; the
// parser has already refused algorithms outside the configured ones.
func (a *authenticator) key(t *jwt.Token) (any, error) {
	switch t.Method.(type) {
	case *jwt.SigningMethodHMAC:
		if len(a.secret) > 0 {
			return a.secret, nil
		}
	case *jwt.SigningMethodRSA:
		if k, ok := a.pub.(*rsa.PublicKey); ok {
			return k, nil
		}
	case *jwt.SigningMethodECDSA:
		if k, ok := a.pub.(*ecdsa.PublicKey); ok {
			return k, nil
		}
	}
	return nil, fmt.Errorf("ws: no key for algorithm %s", t.Method.Alg())
}
