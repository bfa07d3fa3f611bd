package ws

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/rsa"
	"errors"
	"fmt"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// TokenOptions describe a token for NewToken.
type TokenOptions struct {
	// Subject is the sub claim. Required.
	Subject string
	// Subscribe and Publish are channel globs ("news.*").
	Subscribe, Publish []string
	// TTL is how long the token is valid. Required, positive.
	TTL time.Duration
	// Now is the issue time. Default: time.Now().
	Now time.Time
}

// NewToken signs a token the gateway accepts. key is a []byte secret
// (HS256), an *rsa.PrivateKey (RS256) or an *ecdsa.PrivateKey (ES256,
// ES384 or ES512 by curve); see ParsePrivateKeyPEM.
func NewToken(key any, o TokenOptions) (string, error) {
	if o.Subject == "" {
		return "", errors.New("ws: token needs a subject")
	}
	if o.TTL <= 0 {
		return "", errors.New("ws: token needs a positive TTL")
	}
	for _, g := range append(append([]string(nil), o.Subscribe...), o.Publish...) {
		if g == "" {
			return "", errors.New("ws: empty channel glob")
		}
	}
	if o.Now.IsZero() {
		o.Now = time.Now()
	}
	var m jwt.SigningMethod
	switch k := key.(type) {
	case []byte:
		if len(k) == 0 {
			return "", errors.New("ws: empty JWT secret")
		}
		m = jwt.SigningMethodHS256
	case *rsa.PrivateKey:
		m = jwt.SigningMethodRS256
	case *ecdsa.PrivateKey:
		alg, err := ecdsaAlg(k.Curve)
		if err != nil {
			return "", err
		}
		m = jwt.GetSigningMethod(alg)
	default:
		return "", fmt.Errorf("ws: unsupported signing key type %T", key)
	}
	c := Claims{
		RegisteredClaims: jwt.RegisteredClaims{
			Subject:   o.Subject,
			IssuedAt:  jwt.NewNumericDate(o.Now),
			ExpiresAt: jwt.NewNumericDate(o.Now.Add(o.TTL)),
		},
		Subscribe: o.Subscribe,
		Publish:   o.Publish,
	}
	s, err := jwt.NewWithClaims(m, c).SignedString(key)
	if err != nil {
		return "", fmt.Errorf("ws: sign token: %w", err)
	}
	return s, nil
}

// ParsePublicKeyPEM reads an RSA or ECDSA public key (PKIX "PUBLIC KEY",
// PKCS#1 "RSA PUBLIC KEY", or a certificate) for Config.JWTPublicKey.
func ParsePublicKeyPEM(pemBytes []byte) (crypto.PublicKey, error) {
	if k, err := jwt.ParseRSAPublicKeyFromPEM(pemBytes); err == nil {
		return k, nil
	}
	if k, err := jwt.ParseECPublicKeyFromPEM(pemBytes); err == nil {
		return k, nil
	}
	return nil, errors.New("ws: no RSA or ECDSA public key in PEM")
}

// ParsePrivateKeyPEM reads an RSA or ECDSA private key (PKCS#1, PKCS#8 or
// SEC 1) for NewToken.
func ParsePrivateKeyPEM(pemBytes []byte) (crypto.Signer, error) {
	if k, err := jwt.ParseRSAPrivateKeyFromPEM(pemBytes); err == nil {
		return k, nil
	}
	if k, err := jwt.ParseECPrivateKeyFromPEM(pemBytes); err == nil {
		return k, nil
	}
	return nil, errors.New("ws: no RSA or ECDSA private key in PEM")
}
