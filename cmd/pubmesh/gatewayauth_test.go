package main

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// forgedTokens are JWTs an attacker can make without any key: HMAC with an
// empty key, and alg "none". Each claims every channel.
func forgedTokens(t *testing.T) map[string]string {
	t.Helper()
	claims := jwt.MapClaims{
		"sub": "mallory", "exp": time.Now().Add(time.Hour).Unix(),
		"subscribe": []string{"*"}, "publish": []string{"*"},
	}
	out := map[string]string{}
	for _, m := range []jwt.SigningMethod{jwt.SigningMethodHS256, jwt.SigningMethodHS384, jwt.SigningMethodHS512} {
		tok, err := jwt.NewWithClaims(m, claims).SignedString([]byte{})
		if err != nil {
			t.Fatal(err)
		}
		out[m.Alg()+" empty key"] = tok
	}
	none, err := jwt.NewWithClaims(jwt.SigningMethodNone, claims).SignedString(jwt.UnsafeAllowNoneSignatureType)
	if err != nil {
		t.Fatal(err)
	}
	out["alg none"] = none
	return out
}

// TestGatewayAPIKeyOnlyRefusesJWTs starts the real `pubmesh gateway` with
// only an API key file, as an operator would, and presents forged JWTs over
// HTTP and WebSocket: every one is refused with 401. (Before the fix the CLI
// turned the absent --jwt-secret into an empty key and HS256/HS512 tokens
// signed with it had full access.)
func TestGatewayAPIKeyOnlyRefusesJWTs(t *testing.T) {
	t.Parallel()
	const apiKey = "backend-key-4b1f9a"
	keyFile := filepath.Join(t.TempDir(), "keys")
	if err := os.WriteFile(keyFile, []byte(apiKey+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	// The environment is cleared so that no PUBMESH_JWT_* of the machine
	// running the test configures a key.
	gw := startPubmeshEnv(t, []string{}, "gateway", "--listen", addr, "--api-key-file", keyFile,
		"--etcd", etcdEndpoint, "--cluster", uniqueCluster(t))
	gw.out.wait(t, "^gateway: http://"+addr, 30*time.Second)

	post := func(cred string) int {
		req, _ := http.NewRequest("POST", "http://"+addr+"/api/publish/news", strings.NewReader(`{"x":1}`))
		req.Header.Set("Authorization", "Bearer "+cred)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	dial := func(cred string) int { return wsStatus(t, addr, "?token="+cred) }
	for name, tok := range forgedTokens(t) {
		if got := post(tok); got != http.StatusUnauthorized {
			t.Errorf("HTTP publish with a forged JWT (%s): status %d, want 401", name, got)
		}
		if got := dial(tok); got != http.StatusUnauthorized {
			t.Errorf("WebSocket with a forged JWT (%s): status %d, want 401", name, got)
		}
	}
	// The API key itself still works (no node is ready, so the publish is
	// refused as unavailable, not as unauthorized).
	if got := post(apiKey); got == http.StatusUnauthorized {
		t.Errorf("HTTP publish with the API key: 401")
	}
	if got := dial(apiKey); got != http.StatusSwitchingProtocols {
		t.Errorf("WebSocket with the API key: status %d, want 101", got)
	}
}

// TestGatewayEmptySecretIsAConfigError: an empty JWT secret, from the flag
// or the environment, stops the gateway with a clear message instead of
// becoming a key anyone can sign with.
func TestGatewayEmptySecretIsAConfigError(t *testing.T) {
	t.Parallel()
	keyFile := filepath.Join(t.TempDir(), "keys")
	if err := os.WriteFile(keyFile, []byte("k1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	base := []string{"gateway", "--listen", "127.0.0.1:0", "--etcd", etcdEndpoint, "--cluster", uniqueCluster(t)}
	for _, tc := range []struct {
		name string
		env  []string
		args []string
	}{
		{"empty flag", []string{}, []string{"--jwt-secret=", "--api-key-file", keyFile}},
		{"empty flag alone", []string{}, []string{"--jwt-secret="}},
		{"empty env", []string{"PUBMESH_JWT_SECRET="}, []string{"--api-key-file", keyFile}},
		{"blank flag", []string{}, []string{"--jwt-secret", "  ", "--api-key-file", keyFile}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := runPubmeshEnv(t, 30*time.Second, tc.env, append(append([]string{}, base...), tc.args...)...)
			if r.code != 2 || !strings.Contains(r.stderr, "JWT secret is empty") {
				t.Errorf("exit %d, stderr %q: want exit 2 and \"JWT secret is empty\"", r.code, r.stderr)
			}
		})
	}
}
