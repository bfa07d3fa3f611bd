package main

import (
	"encoding/json"
	"fmt"

	"github.com/urfave/cli/v2"

	"github.com/pubmesh/pubmesh/internal/version"
)

func versionCommand() *cli.Command {
	return &cli.Command{
		Name:  "version",
		Usage: "print the version, source commit, Go version and the redis-server versions pubmesh works with",
		Flags: []cli.Flag{&cli.BoolFlag{Name: "json", Usage: "print one JSON object"}},
		Action: func(c *cli.Context) error {
			b := version.Build()
			w := c.App.Writer
			if c.Bool("json") {
				return json.NewEncoder(w).Encode(b)
			}
			commit := b.Commit
			if b.Modified {
				commit += " (modified)"
			}
			fmt.Fprintf(w, "pubmesh %s\ncommit:   %s\ngo:       %s %s\nredis:    %s or later (tested with %s)\n",
				b.Version, commit, b.Go, b.Platform, b.RedisMin, b.RedisTested)
			return nil
		},
	}
}
