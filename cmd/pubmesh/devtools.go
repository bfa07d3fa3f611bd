//go:build !devtools

package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"

	"github.com/urfave/cli/v2"
)

// The dev and bench commands are built into pubmesh-dev, a second build
// of this command (`go build -tags devtools -o pubmesh-dev ./cmd/pubmesh`;
// `make build` makes both). They link an etcd server and a plotting
// library, whose package initialisation alone took about 19 ms of every
// start of pubmesh, on the path of a joining node (docs/reliability.md,
// "Detection"); the binary a host runs is 17 MB smaller without them. In
// this build the two commands run pubmesh-dev in place of this process:
// same PID, arguments, environment and exit status.

const devtoolsBinary = "pubmesh-dev"

func devCommand() *cli.Command {
	return devtoolsCommand("dev", devUsage+" (runs "+devtoolsBinary+")")
}

func benchCommand() *cli.Command {
	return devtoolsCommand("bench", benchUsage+" (runs "+devtoolsBinary+")")
}

func devtoolsCommand(name, usage string) *cli.Command {
	return &cli.Command{
		Name:            name,
		Usage:           usage,
		SkipFlagParsing: true, // pubmesh-dev parses them, --help included
		Action: func(c *cli.Context) error {
			path, err := devtoolsPath(name)
			if err != nil {
				return err
			}
			argv := append([]string{path, name}, c.Args().Slice()...)
			if err := syscall.Exec(path, argv, os.Environ()); err != nil {
				return fmt.Errorf("run %s: %w", path, err)
			}
			return nil // not reached: Exec returns only on error
		},
	}
}

// devtoolsPath finds pubmesh-dev next to this executable, then on PATH.
func devtoolsPath(name string) (string, error) {
	if exe, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(exe), devtoolsBinary)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0 {
			return p, nil
		}
	}
	p, err := exec.LookPath(devtoolsBinary)
	if err == nil {
		return p, nil
	}
	if !errors.Is(err, exec.ErrNotFound) {
		return "", fmt.Errorf("pubmesh %s: %w", name, err)
	}
	return "", fmt.Errorf("pubmesh %s is in %s, which is neither next to this pubmesh nor on PATH: `make build` builds both into bin/ (or: go build -tags devtools -o %s ./cmd/pubmesh)",
		name, devtoolsBinary, devtoolsBinary)
}
