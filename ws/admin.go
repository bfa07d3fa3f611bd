package ws

import (
	"fmt"
	"net/http"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// The admin page (docs/operations.md, docs/security.md) is served only when
// Config.AdminPassword is set:
//
//	GET  /admin                          the page (no data: it loads it from the API once logged in)
//	GET  /admin/admin.js, /admin/admin.css
//	POST /admin/login                    form field "password": sets the session cookie (204), 401, 429
//	POST /admin/logout                   clears it
//	GET  /admin/api/overview             nodes, gateways, fanout clients, channels, message rate
//	GET  /admin/api/config               the cluster configuration document (YAML) and its revision
//	POST /admin/api/config/preview       {"document","revision"}: the problems, or the diff
//	POST /admin/api/config/apply         {"document","revision","comment"}: compare-and-swap on revision
//	POST /admin/api/nodes/{id}/drain     ask the node's agent to drain (pubmesh drain's path)
//
// Every /admin/api call needs the session cookie (401 without); the POSTs
// also need a same-origin Origin header (403 otherwise), against CSRF.

// admin is the handler's admin page.
type admin struct {
	h        *Handler
	auth     *adminAuth
	logins   *prometheus.CounterVec // by result
	actions  *prometheus.CounterVec // by action, result
	refusals *prometheus.CounterVec // by reason

	rateMu sync.Mutex
	rate   rateMeter
}

// startAdmin serves the admin page when an admin password is configured,
// and says so either way.
func (h *Handler) startAdmin() error {
	if h.cfg.AdminPassword == nil {
		h.log.Info("ws: admin page off: no admin password configured (--admin-password-file)")
		return nil
	}
	auth, err := newAdminAuth(h.cfg.AdminPassword, h.cfg.AdminSessionTTL)
	if err != nil {
		return err
	}
	a := &admin{h: h, auth: auth,
		logins: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "pubmesh_ws_admin_logins_total",
			Help: "Admin page logins, by result: ok, failed (wrong password), rate_limited (refused unchecked: too many failures)."}, []string{"result"}),
		actions: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "pubmesh_ws_admin_actions_total",
			Help: "Admin page actions, by action (drain, config_preview, config_apply, logout) and result (ok, invalid, conflict, error)."}, []string{"action", "result"}),
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "pubmesh_ws_admin_refusals_total",
			Help: "Admin requests refused, by reason: no_session, bad_session (forged or from another process), expired, cross_origin."}, []string{"reason"}),
	}
	for _, c := range []prometheus.Collector{a.logins, a.actions, a.refusals} {
		if err := h.cfg.Metrics.Register(c); err != nil {
			return fmt.Errorf("ws: admin metrics: %w", err)
		}
	}
	h.admin = a
	m := h.mux
	m.HandleFunc("GET /admin", a.page("admin.html", "text/html; charset=utf-8"))
	m.HandleFunc("GET /admin/{$}", func(w http.ResponseWriter, r *http.Request) { http.Redirect(w, r, "/admin", http.StatusSeeOther) })
	m.HandleFunc("GET /admin/admin.js", a.page("admin.js", "text/javascript; charset=utf-8"))
	m.HandleFunc("GET /admin/admin.css", a.page("admin.css", "text/css; charset=utf-8"))
	m.HandleFunc("POST /admin/login", a.serveLogin)
	m.HandleFunc("POST /admin/logout", a.action("logout", a.serveLogout))
	m.HandleFunc("GET /admin/api/overview", a.api(a.serveOverview))
	m.HandleFunc("GET /admin/api/config", a.api(a.serveConfig))
	m.HandleFunc("POST /admin/api/config/preview", a.action("config_preview", a.servePreview))
	m.HandleFunc("POST /admin/api/config/apply", a.action("config_apply", a.serveApply))
	m.HandleFunc("POST /admin/api/nodes/{id}/drain", a.action("drain", a.serveDrain))
	h.log.Info("ws: admin page on", "path", "/admin", "session_ttl", h.cfg.AdminSessionTTL)
	return nil
}

// adminCSP allows the page's own script, style and API calls, and nothing
// else: no inline script, no other origin, no framing.
const adminCSP = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; " +
	"form-action 'self'; frame-ancestors 'none'; base-uri 'none'"

// page serves an embedded file of the admin page, with its CSP. The page
// holds no data, so it is served without a session: it shows the login
// form until the API lets it in.
func (a *admin) page(name, contentType string) http.HandlerFunc {
	serve := serveStatic(name, contentType)
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Security-Policy", adminCSP)
		w.Header().Set("X-Frame-Options", "DENY")
		w.Header().Set("Referrer-Policy", "no-referrer")
		serve(w, r)
	}
}

// api wraps an admin API call: the session cookie is required.
func (a *admin) api(next http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if err := a.auth.verify(r); err != nil {
			a.refuse(w, r, err)
			return
		}
		w.Header().Set("Cache-Control", "no-store")
		next(w, r)
	}
}

// action wraps a state-changing admin call: the session cookie and a
// same-origin request.
func (a *admin) action(kind string, next http.HandlerFunc) http.HandlerFunc {
	return a.api(func(w http.ResponseWriter, r *http.Request) {
		if !sameOrigin(r) {
			a.refuse(w, r, errAdminCrossOrigin)
			a.h.log.Warn("admin action refused", "who", "admin", "what", kind, "result", "cross_origin",
				"origin", r.Header.Get("Origin"), "remote", r.RemoteAddr)
			return
		}
		next(w, r)
	})
}

func (a *admin) refuse(w http.ResponseWriter, r *http.Request, reason error) {
	a.refusals.WithLabelValues(reason.Error()).Inc()
	w.Header().Set("Cache-Control", "no-store")
	if reason == errAdminCrossOrigin {
		writeJSON(w, http.StatusForbidden, adminError{Error: "refused: not a same-origin request (the Origin header must name this gateway)"})
		return
	}
	msg := "login required"
	if reason == errAdminExpired {
		msg = "the admin session expired: log in again"
	}
	writeJSON(w, http.StatusUnauthorized, adminError{Error: msg})
}

// adminError is the body of a refused or failed admin call.
type adminError struct {
	Error    string   `json:"error"`
	Problems []string `json:"problems,omitempty"`
}

// serveLogin checks the form's password. The password is never logged.
// Login is same-origin too, so another site cannot log a browser into
// this gateway's admin page.
func (a *admin) serveLogin(w http.ResponseWriter, r *http.Request) {
	log := a.h.log.With("who", "admin", "what", "login", "remote", r.RemoteAddr)
	w.Header().Set("Cache-Control", "no-store")
	if !sameOrigin(r) {
		a.refusals.WithLabelValues(errAdminCrossOrigin.Error()).Inc()
		log.Warn("admin login refused", "result", "cross_origin", "origin", r.Header.Get("Origin"))
		writeJSON(w, http.StatusForbidden, adminError{Error: "refused: not a same-origin request"})
		return
	}
	if !a.auth.loginAllowed() {
		a.logins.WithLabelValues("rate_limited").Inc()
		log.Warn("admin login refused", "result", "rate_limited")
		w.Header().Set("Retry-After", "1")
		writeJSON(w, http.StatusTooManyRequests, adminError{Error: "too many failed logins: wait a moment"})
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, 4<<10)
	if err := r.ParseForm(); err != nil || !a.auth.checkPassword(r.PostForm.Get("password")) {
		a.auth.failed()
		a.logins.WithLabelValues("failed").Inc()
		log.Warn("admin login refused", "result", "wrong_password")
		writeJSON(w, http.StatusUnauthorized, adminError{Error: "wrong password"})
		return
	}
	http.SetCookie(w, a.auth.cookie(r))
	a.logins.WithLabelValues("ok").Inc()
	log.Info("admin login", "result", "ok")
	w.WriteHeader(http.StatusNoContent)
}

func (a *admin) serveLogout(w http.ResponseWriter, r *http.Request) {
	http.SetCookie(w, clearCookie(r))
	a.done(r, "logout", "ok")
	w.WriteHeader(http.StatusNoContent)
}

// done counts and logs an admin action's result.
func (a *admin) done(r *http.Request, action, result string, attrs ...any) {
	a.actions.WithLabelValues(action, result).Inc()
	args := append([]any{"who", "admin", "what", action, "result", result, "remote", r.RemoteAddr}, attrs...)
	if result == "ok" {
		a.h.log.Info("admin action", args...)
	} else {
		a.h.log.Warn("admin action", args...)
	}
}
