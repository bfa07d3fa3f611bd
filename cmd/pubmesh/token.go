package main

import (
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/pubmesh/pubmesh/ws"
)

func tokenCommand() *cli.Command {
	return &cli.Command{
		Name:      "token",
		Usage:     "print a JWT that lets a WebSocket client into the gateway, limited to some channels",
		UsageText: "pubmesh token --sub alice --subscribe 'news.*' --publish 'chat.*' --ttl 1h (--jwt-secret S | --jwt-private-key FILE)",
		Description: "Signs with the gateway's HS256 secret (--jwt-secret, --jwt-secret-file or PUBMESH_JWT_SECRET), or\n" +
			"with an RSA (RS256) or ECDSA (ES256) private key whose public key the gateway has (--jwt-public-key).\n" +
			"Globs: '*' matches any run of characters, so 'news.*' matches news.eu and news.eu.fr (not news).\n" +
			"A client uses it as ws://HOST/ws?token=TOKEN, or Authorization: Bearer TOKEN over HTTP.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "sub", Usage: "subject (who the token is for); required", DefaultText: "none", EnvVars: []string{"PUBMESH_TOKEN_SUB"}},
			&cli.StringSliceFlag{Name: "subscribe", Usage: "channel glob the bearer may subscribe to (repeat or comma-separate)", DefaultText: "none", EnvVars: []string{"PUBMESH_TOKEN_SUBSCRIBE"}},
			&cli.StringSliceFlag{Name: "publish", Usage: "channel glob the bearer may publish to (repeat or comma-separate)", DefaultText: "none", EnvVars: []string{"PUBMESH_TOKEN_PUBLISH"}},
			&cli.DurationFlag{Name: "ttl", Value: time.Hour, Usage: "how long the token is valid", EnvVars: []string{"PUBMESH_TOKEN_TTL"}},
			&cli.StringFlag{Name: "jwt-secret", Usage: "HS256 secret shared with the gateway", DefaultText: "none", EnvVars: []string{"PUBMESH_JWT_SECRET"}},
			&cli.StringFlag{Name: "jwt-secret-file", Usage: "file holding the HS256 secret (trailing newline ignored)", DefaultText: "none", EnvVars: []string{"PUBMESH_JWT_SECRET_FILE"}},
			&cli.StringFlag{Name: "jwt-private-key", Usage: "PEM file of an RSA (RS256) or ECDSA (ES256) private key", DefaultText: "none", EnvVars: []string{"PUBMESH_JWT_PRIVATE_KEY"}},
		},
		Action: runToken,
	}
}

func runToken(c *cli.Context) error {
	if c.Args().Present() {
		return usageError{fmt.Errorf("unexpected argument %q (see pubmesh token --help)", c.Args().First())}
	}
	if c.String("sub") == "" {
		return usageError{errors.New("--sub is required")}
	}
	if c.Duration("ttl") <= 0 {
		return usageError{fmt.Errorf("invalid --ttl %s: must be positive", c.Duration("ttl"))}
	}
	if len(c.StringSlice("subscribe")) == 0 && len(c.StringSlice("publish")) == 0 {
		return usageError{errors.New("give at least one --subscribe or --publish channel glob")}
	}
	secret, err := secretFlag(c, "jwt-secret", "jwt-secret-file")
	if err != nil {
		return usageError{err}
	}
	var key any
	switch path := c.String("jwt-private-key"); {
	case path != "" && len(secret) > 0:
		return usageError{errors.New("give a JWT secret or --jwt-private-key, not both")}
	case path != "":
		b, err := os.ReadFile(path)
		if err != nil {
			return usageError{fmt.Errorf("--jwt-private-key: %w", err)}
		}
		if key, err = ws.ParsePrivateKeyPEM(b); err != nil {
			return usageError{fmt.Errorf("--jwt-private-key %s: %w", path, err)}
		}
	case len(secret) > 0:
		key = secret
	default:
		return usageError{errors.New("no signing key: give --jwt-secret (or PUBMESH_JWT_SECRET), --jwt-secret-file or --jwt-private-key")}
	}
	tok, err := ws.NewToken(key, ws.TokenOptions{
		Subject:   c.String("sub"),
		Subscribe: c.StringSlice("subscribe"),
		Publish:   c.StringSlice("publish"),
		TTL:       c.Duration("ttl"),
	})
	if err != nil {
		return usageError{err}
	}
	fmt.Fprintln(c.App.Writer, tok)
	return nil
}
