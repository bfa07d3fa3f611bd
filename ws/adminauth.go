package ws

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"golang.org/x/time/rate"
)

// DefaultAdminSessionTTL is how long an admin session cookie lasts unless
// Config.AdminSessionTTL says otherwise.
const DefaultAdminSessionTTL = 12 * time.Hour

// adminCookie is the admin session cookie's name.
const adminCookie = "pubmesh_admin"

// Failed admin logins are limited to adminLoginRate per second with
// bursts of adminLoginBurst, for the whole gateway: a password guesser
// gets about one guess a second, whoever and wherever it is.
const (
	adminLoginRate  = 1
	adminLoginBurst = 5
)

// Why an admin request was refused (the reason label of
// pubmesh_ws_admin_refusals_total).
var (
	errAdminNoSession   = errors.New("no_session")
	errAdminBadSession  = errors.New("bad_session")
	errAdminExpired     = errors.New("expired")
	errAdminCrossOrigin = errors.New("cross_origin")
)

// adminAuth checks the admin password and issues and verifies session
// cookies. A session is stateless: the cookie holds its expiry, signed
// with HMAC-SHA256 under a key drawn at random when the process starts,
// so a restart (or another gateway) logs everybody out, and nothing is
// stored.
type adminAuth struct {
	password [sha256.Size]byte // the password's digest, compared in constant time
	key      [32]byte
	ttl      time.Duration
	failures *rate.Limiter
	now      func() time.Time
}

func newAdminAuth(password []byte, ttl time.Duration) (*adminAuth, error) {
	a := &adminAuth{password: sha256.Sum256(password), ttl: ttl, now: time.Now,
		failures: rate.NewLimiter(adminLoginRate, adminLoginBurst)}
	if _, err := rand.Read(a.key[:]); err != nil {
		return nil, fmt.Errorf("ws: admin session key: %w", err)
	}
	return a, nil
}

// checkPassword compares the digests, so neither the password's length
// nor its first differing byte shows in the time taken.
func (a *adminAuth) checkPassword(p string) bool {
	d := sha256.Sum256([]byte(p))
	return subtle.ConstantTimeCompare(d[:], a.password[:]) == 1
}

// loginAllowed reports whether a login may be tried now: false while the
// failed-login budget is spent. A success does not spend it.
func (a *adminAuth) loginAllowed() bool { return a.failures.Tokens() >= 1 }

// failed spends one failed login.
func (a *adminAuth) failed() { a.failures.Allow() }

// sign returns a session cookie value that expires at exp:
// "v1.<unix seconds>.<base64url HMAC>".
func (a *adminAuth) sign(exp time.Time) string {
	payload := "v1." + strconv.FormatInt(exp.Unix(), 10)
	return payload + "." + base64.RawURLEncoding.EncodeToString(a.mac(payload))
}

func (a *adminAuth) mac(payload string) []byte {
	m := hmac.New(sha256.New, a.key[:])
	m.Write([]byte("pubmesh admin session|" + payload))
	return m.Sum(nil)
}

// verify checks a request's session cookie.
func (a *adminAuth) verify(r *http.Request) error {
	c, err := r.Cookie(adminCookie)
	if err != nil || c.Value == "" {
		return errAdminNoSession
	}
	i := strings.LastIndexByte(c.Value, '.')
	if i < 0 {
		return errAdminBadSession
	}
	payload, sig := c.Value[:i], c.Value[i+1:]
	got, err := base64.RawURLEncoding.DecodeString(sig)
	if err != nil || !hmac.Equal(got, a.mac(payload)) {
		return errAdminBadSession
	}
	v, exp, ok := strings.Cut(payload, ".")
	unix, err := strconv.ParseInt(exp, 10, 64)
	if !ok || v != "v1" || err != nil {
		return errAdminBadSession
	}
	if !a.now().Before(time.Unix(unix, 0)) {
		return errAdminExpired
	}
	return nil
}

// cookie is the session cookie for a login on r: HttpOnly (no script
// reads it), SameSite=Strict (no other site's page sends it), Secure when
// the request came over TLS, scoped to /admin.
func (a *adminAuth) cookie(r *http.Request) *http.Cookie {
	exp := a.now().Add(a.ttl)
	return &http.Cookie{Name: adminCookie, Value: a.sign(exp), Path: "/admin", Expires: exp,
		MaxAge: int(a.ttl / time.Second), HttpOnly: true, Secure: r.TLS != nil, SameSite: http.SameSiteStrictMode}
}

// clearCookie ends the session in the browser (logout). The cookie
// itself stays valid until it expires: sessions are not stored.
func clearCookie(r *http.Request) *http.Cookie {
	return &http.Cookie{Name: adminCookie, Value: "", Path: "/admin", MaxAge: -1,
		HttpOnly: true, Secure: r.TLS != nil, SameSite: http.SameSiteStrictMode}
}

// sameOrigin is the CSRF check of state-changing admin requests: the
// browser's Origin header must name this gateway (scheme and host as the
// request reached it). A request without Origin is refused too: every
// browser sends it on a POST, so its absence means a client that can set
// it (curl: -H "Origin: https://host").
func sameOrigin(r *http.Request) bool {
	o := r.Header.Get("Origin")
	if o == "" {
		return false
	}
	u, err := url.Parse(o)
	if err != nil || u.Host == "" {
		return false
	}
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	return strings.EqualFold(u.Scheme, scheme) && strings.EqualFold(u.Host, r.Host)
}
