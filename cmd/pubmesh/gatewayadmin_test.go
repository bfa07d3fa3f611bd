package main

import (
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

const adminTestPassword = "adm1n-pw-7c3e91"

// adminGateway starts the real `pubmesh gateway` with an admin password
// file, named by the environment variable as a systemd unit would, and
// extra flags; it returns the gateway's base URL and the process.
func adminGateway(t *testing.T, withAdmin bool, extra ...string) (string, *proc) {
	t.Helper()
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "keys")
	if err := os.WriteFile(keyFile, []byte("backend-key-19af\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	env := []string{}
	if withAdmin {
		pw := filepath.Join(dir, "admin-password")
		if err := os.WriteFile(pw, []byte(adminTestPassword+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		env = append(env, "PUBMESH_ADMIN_PASSWORD_FILE="+pw)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	args := append([]string{"gateway", "--listen", addr, "--api-key-file", keyFile,
		"--etcd", etcdEndpoint, "--cluster", uniqueCluster(t)}, extra...)
	gw := startPubmeshEnv(t, env, args...)
	gw.out.wait(t, "^gateway: http://"+addr, 30*time.Second)
	return "http://" + addr, gw
}

// adminDo sends one request: cookie is the session cookie's value ("":
// none), origin the Origin header ("": none).
func adminDo(t *testing.T, method, u, body, cookie, origin string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(method, u, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if method == "POST" {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	if cookie != "" {
		req.AddCookie(&http.Cookie{Name: "pubmesh_admin", Value: cookie})
	}
	if origin != "" {
		req.Header.Set("Origin", origin)
	}
	resp, err := (&http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, string(b)
}

func sessionCookie(resp *http.Response) *http.Cookie {
	for _, c := range resp.Cookies() {
		if c.Name == "pubmesh_admin" && c.Value != "" {
			return c
		}
	}
	return nil
}

// TestGatewayAdminAuth: the admin page of a gateway configured by the CLI
// lets in only a browser session made with the admin password, and
// refuses every other way in: no cookie, a wrong password, a forged or
// tampered cookie, an API key, a cross-origin or Origin-less POST; failed
// logins are rate-limited and counted, and the password is never logged.
func TestGatewayAdminAuth(t *testing.T) {
	t.Parallel()
	base, gw := adminGateway(t, true)
	login := func(pw, origin string) (*http.Response, string) {
		return adminDo(t, "POST", base+"/admin/login", url.Values{"password": {pw}}.Encode(), "", origin)
	}

	resp, body := adminDo(t, "GET", base+"/admin", "", "", "")
	if resp.StatusCode != 200 || !strings.Contains(body, `id="login-form"`) {
		t.Fatalf("GET /admin: %d, want 200 and the login form", resp.StatusCode)
	}
	if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "script-src 'self'") || !strings.Contains(csp, "frame-ancestors 'none'") {
		t.Errorf("CSP of /admin: %q", csp)
	}

	resp, _ = login("wrong-password", base)
	if resp.StatusCode != http.StatusUnauthorized || sessionCookie(resp) != nil {
		t.Fatalf("login with a wrong password: %d, cookie %v: want 401 and no cookie", resp.StatusCode, sessionCookie(resp))
	}
	resp, _ = login(adminTestPassword, "http://evil.example")
	if resp.StatusCode != http.StatusForbidden || sessionCookie(resp) != nil {
		t.Fatalf("cross-origin login: %d, want 403 and no cookie", resp.StatusCode)
	}
	resp, _ = login(adminTestPassword, base)
	c := sessionCookie(resp)
	if resp.StatusCode != http.StatusNoContent || c == nil {
		t.Fatalf("login with the password: %d, cookie %v: want 204 and a cookie", resp.StatusCode, c)
	}
	if !c.HttpOnly || c.SameSite != http.SameSiteStrictMode || c.Secure || c.Path != "/admin" {
		t.Errorf("cookie %+v: want HttpOnly, SameSite=Strict, not Secure over plain HTTP, Path /admin", c)
	}
	if left := time.Until(c.Expires); left < 11*time.Hour || left > 13*time.Hour {
		t.Errorf("cookie expires in %s, want about 12h", left)
	}

	// Tampering: the signature no longer matches the expiry.
	parts := strings.Split(c.Value, ".")
	far := strconv.FormatInt(time.Now().Add(1000*time.Hour).Unix(), 10)
	tampered := parts[0] + "." + far + "." + parts[2]
	overview := base + "/admin/api/overview"
	for _, tc := range []struct {
		name, cookie string
		want         int
	}{
		{"no cookie", "", http.StatusUnauthorized},
		{"forged cookie", "v1." + far + ".AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", http.StatusUnauthorized},
		{"tampered expiry", tampered, http.StatusUnauthorized},
		{"the API key as cookie", "backend-key-19af", http.StatusUnauthorized},
		{"session", c.Value, http.StatusOK},
	} {
		if resp, body := adminDo(t, "GET", overview, "", tc.cookie, ""); resp.StatusCode != tc.want {
			t.Errorf("overview with %s: %d %s, want %d", tc.name, resp.StatusCode, body, tc.want)
		} else if tc.want != 200 && strings.Contains(body, `"nodes"`) {
			t.Errorf("overview with %s: refused, yet the body has data: %s", tc.name, body)
		}
	}
	// An API key, in a header or in the URL, is not the admin credential.
	req, _ := http.NewRequest("GET", overview+"?api_key=backend-key-19af", nil)
	req.Header.Set("Authorization", "Bearer backend-key-19af")
	if resp, err := http.DefaultClient.Do(req); err != nil {
		t.Fatal(err)
	} else if resp.Body.Close(); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("overview with the API key: %d, want 401", resp.StatusCode)
	}

	// State-changing calls need the same origin on top of the cookie (no
	// node "ghost" exists: past the checks the answer is 404).
	drain := base + "/admin/api/nodes/ghost/drain"
	for _, tc := range []struct {
		name, cookie, origin string
		want                 int
	}{
		{"no cookie", "", base, http.StatusUnauthorized},
		{"cross-origin", c.Value, "http://evil.example", http.StatusForbidden},
		{"other port", c.Value, "http://127.0.0.1:1", http.StatusForbidden},
		{"no Origin", c.Value, "", http.StatusForbidden},
		{"same origin", c.Value, base, http.StatusNotFound},
	} {
		if resp, body := adminDo(t, "POST", drain, "{}", tc.cookie, tc.origin); resp.StatusCode != tc.want {
			t.Errorf("drain, %s: %d %s, want %d", tc.name, resp.StatusCode, body, tc.want)
		}
	}

	// Failed logins are rate-limited: a burst of wrong passwords meets
	// 429, and even the right password waits its turn.
	limited := false
	for range 8 {
		if resp, _ := login("guess", base); resp.StatusCode == http.StatusTooManyRequests {
			limited = true
			break
		}
	}
	if !limited {
		t.Errorf("8 wrong passwords in a row: never 429")
	}
	_, metrics := adminDo(t, "GET", base+"/metrics", "", "", "")
	for _, want := range []string{`pubmesh_ws_admin_logins_total{result="ok"} 1`, `pubmesh_ws_admin_logins_total{result="rate_limited"}`,
		`pubmesh_ws_admin_refusals_total{reason="cross_origin"}`, `pubmesh_ws_admin_refusals_total{reason="bad_session"}`,
		`pubmesh_ws_admin_actions_total{action="drain",result="error"} 1`} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	gw.errs.wait(t, "admin login refused.*wrong_password", 5*time.Second)
	gw.errs.mu.Lock()
	logs := strings.Join(gw.errs.all, "\n")
	gw.errs.mu.Unlock()
	if strings.Contains(logs, adminTestPassword) {
		t.Errorf("the admin password is in the gateway's log")
	}
}

// TestGatewayAdminOffAndExpiry: without --admin-password-file /admin is
// not served at all and the gateway says so; a session outlives its
// --admin-session-ttl in no request; an empty password file stops the
// gateway.
func TestGatewayAdminOffAndExpiry(t *testing.T) {
	t.Parallel()
	t.Run("off", func(t *testing.T) {
		t.Parallel()
		base, gw := adminGateway(t, false)
		for _, p := range []string{"/admin", "/admin/api/overview", "/admin/admin.js"} {
			if resp, _ := adminDo(t, "GET", base+p, "", "", ""); resp.StatusCode != http.StatusNotFound {
				t.Errorf("GET %s without an admin password: %d, want 404", p, resp.StatusCode)
			}
		}
		if resp, _ := adminDo(t, "POST", base+"/admin/login", "password=x", "", base); resp.StatusCode != http.StatusNotFound &&
			resp.StatusCode != http.StatusMethodNotAllowed {
			t.Errorf("POST /admin/login without an admin password: %d, want 404", resp.StatusCode)
		}
		gw.errs.wait(t, "admin page off", 5*time.Second)
	})
	t.Run("expiry", func(t *testing.T) {
		t.Parallel()
		base, _ := adminGateway(t, true, "--admin-session-ttl", "1s")
		resp, _ := adminDo(t, "POST", base+"/admin/login", "password="+adminTestPassword, "", base)
		c := sessionCookie(resp)
		if c == nil {
			t.Fatalf("login: %d, no cookie", resp.StatusCode)
		}
		time.Sleep(2100 * time.Millisecond)
		resp, body := adminDo(t, "GET", base+"/admin/api/overview", "", c.Value, "")
		if resp.StatusCode != http.StatusUnauthorized || !strings.Contains(body, "expired") {
			t.Errorf("overview with an expired session: %d %s, want 401 and \"expired\"", resp.StatusCode, body)
		}
	})
	t.Run("empty password file", func(t *testing.T) {
		t.Parallel()
		pw := filepath.Join(t.TempDir(), "pw")
		if err := os.WriteFile(pw, []byte("\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		r := runPubmeshEnv(t, 30*time.Second, []string{}, "gateway", "--listen", "127.0.0.1:0", "--insecure",
			"--admin-password-file", pw, "--etcd", etcdEndpoint, "--cluster", uniqueCluster(t))
		if r.code != 2 || !strings.Contains(r.stderr, "admin password is empty") {
			t.Errorf("exit %d, stderr %q: want exit 2 and \"admin password is empty\"", r.code, r.stderr)
		}
	})
}
