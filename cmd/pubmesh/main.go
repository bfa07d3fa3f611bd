// Command pubmesh runs and inspects a pubmesh cluster: independent
// redis-server nodes registered in etcd that together form one elastic
// pub/sub tier. See README.md and docs/operations.md.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/urfave/cli/v2"

	"github.com/pubmesh/pubmesh/internal/version"
)

func main() {
	os.Exit(run(context.Background(), os.Args, os.Stdout, os.Stderr))
}

// run runs the CLI and returns the exit code: 0, 1 for an error, 2 for a
// usage error. Errors are one line on stderr, never a panic.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	app := newApp(stdout, stderr)
	if err := app.RunContext(ctx, hoistFlags(app, args)); err != nil {
		fmt.Fprintln(stderr, "pubmesh: "+oneLine(err.Error()))
		var ue usageError
		if errors.As(err, &ue) {
			return 2
		}
		return 1
	}
	return 0
}

func newApp(stdout, stderr io.Writer) *cli.App {
	app := &cli.App{
		Name:    "pubmesh",
		Usage:   "an elastic Redis pub/sub tier: independent redis-server nodes, discovered through etcd",
		Version: version.Version,
		Description: "Start a local cluster with `pubmesh dev`, add nodes with `pubmesh node`, list them with\n" +
			"`pubmesh nodes` and retire one with `pubmesh drain ID`. Every flag can also be set with the\n" +
			"environment variable shown in its help, e.g. PUBMESH_ETCD.",
		// A plain list: later commands are added here.
		Commands: []*cli.Command{
			devCommand(),
			nodeCommand(),
			nodesCommand(),
			clientsCommand(),
			gatewaysCommand(),
			drainCommand(),
			publishCommand(),
			subscribeCommand(),
			historyCommand(),
			gatewayCommand(),
			tokenCommand(),
			configCommand(),
			benchCommand(),
			versionCommand(),
		},
		Writer:    stdout,
		ErrWriter: stderr,
		// run prints errors and picks the exit code; the library must not
		// exit by itself.
		ExitErrHandler: func(*cli.Context, error) {},
		OnUsageError:   onUsageError,
		Action: func(c *cli.Context) error {
			if c.Args().Present() {
				return usageError{fmt.Errorf("unknown command %q (see pubmesh --help)", c.Args().First())}
			}
			return cli.ShowAppHelp(c)
		},
	}
	for _, cmd := range app.Commands {
		if cmd.OnUsageError == nil {
			cmd.OnUsageError = onUsageError
		}
	}
	return app
}

// usageError is a mistake on the command line (exit status 2).
type usageError struct{ error }

func (e usageError) Unwrap() error { return e.error }

func onUsageError(c *cli.Context, err error, _ bool) error {
	name := "pubmesh"
	if c.Command != nil && c.Command.Name != "" {
		name += " " + c.Command.Name
	}
	return usageError{fmt.Errorf("%w (see %s --help)", err, name)}
}
