package ws

import (
	"errors"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// TestNoJWTKeyNoJWT: without a JWT key configured, no token is parsed,
// whatever algorithm its header names and whatever key signed it; an empty
// secret is refused as configuration, never used as a key.
func TestNoJWTKeyNoJWT(t *testing.T) {
	t.Parallel()
	claims := jwt.MapClaims{"sub": "mallory", "exp": time.Now().Add(time.Hour).Unix(), "subscribe": []string{"*"}, "publish": []string{"*"}}
	sign := func(m jwt.SigningMethod, key any) string {
		s, err := jwt.NewWithClaims(m, claims).SignedString(key)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	forged := map[string]string{
		"HS256 empty key": sign(jwt.SigningMethodHS256, []byte{}),
		"HS384 empty key": sign(jwt.SigningMethodHS384, []byte{}),
		"HS512 empty key": sign(jwt.SigningMethodHS512, []byte{}),
		"HS256 any key":   sign(jwt.SigningMethodHS256, []byte("guess")),
		"alg none":        sign(jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType),
	}
	for _, tc := range []struct {
		name    string
		cfg     Config
		wantErr error
	}{
		{"API keys only", Config{APIKeys: []string{"k"}}, nil},
		{"API keys, empty non-nil secret", Config{APIKeys: []string{"k"}, JWTSecret: []byte{}}, ErrEmptyJWTSecret},
		{"blank secret", Config{JWTSecret: []byte(" \n")}, ErrEmptyJWTSecret},
		{"insecure, empty secret", Config{Insecure: true, JWTSecret: []byte{}}, ErrEmptyJWTSecret},
		{"HS256 secret", Config{JWTSecret: []byte("real-secret")}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, err := newAuthenticator(&tc.cfg)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("newAuthenticator: %v, want %v", err, tc.wantErr)
			}
			if err != nil {
				return
			}
			for name, tok := range forged {
				if p, err := a.check(tok); err == nil {
					t.Errorf("forged token (%s) accepted as %+v", name, p)
				}
			}
		})
	}
}
