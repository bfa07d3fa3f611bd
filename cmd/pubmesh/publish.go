package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"

	"github.com/urfave/cli/v2"

	"github.com/pubmesh/pubmesh/fanout"
)

// maxLine bounds one stdin line (one message) for `publish`.
const maxLine = 16 << 20

func publishCommand() *cli.Command {
	return &cli.Command{
		Name:      "publish",
		Usage:     "publish a message, or each line of stdin, to a channel",
		ArgsUsage: "CHANNEL [MESSAGE]",
		Description: "With MESSAGE, publishes it once. Without, publishes each line of stdin as one message, in order,\n" +
			"and exits 0 only when every line was accepted by a node. Lines are pipelined (PublishAsync), in order. Example: seq 1 100000 | pubmesh publish news",
		Flags:  fanoutFlags(),
		Action: publishAction,
	}
}

func publishAction(c *cli.Context) error {
	if c.NArg() < 1 || c.NArg() > 2 {
		return usageError{errors.New("want CHANNEL [MESSAGE] (see pubmesh publish --help)")}
	}
	channel := c.Args().Get(0)
	client, log, done, err := openFanout(c, []string{channel}, fanout.DropOldest)
	if err != nil {
		return err
	}
	defer done()
	ctx := c.Context
	if c.NArg() == 2 {
		return client.Publish(ctx, channel, []byte(c.Args().Get(1)))
	}
	return publishLines(ctx, client, channel, c.App.Reader, log)
}

// publishLines publishes each line of r with PublishAsync: one pipeline
// carries many lines, in order. It stops reading at the first line that
// failed and reports it with the count of lines accepted.
func publishLines(ctx context.Context, client *fanout.Client, channel string, r io.Reader, log *slog.Logger) error {
	type pending struct {
		line int
		res  *fanout.PublishResult
	}
	var window []pending
	ok := 0
	// check takes finished results from the front of window, in line
	// order; with wait it waits for each.
	check := func(wait bool) error {
		for len(window) > 0 {
			p := window[0]
			if !wait {
				select {
				case <-p.res.Done():
				default:
					return nil
				}
			}
			if err := p.res.Err(); err != nil {
				return fmt.Errorf("line %d: %w (%d lines published before it)", p.line, err, ok)
			}
			ok++
			window = window[1:]
		}
		return nil
	}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), maxLine)
	n := 0
	for sc.Scan() {
		n++
		window = append(window, pending{n, client.PublishAsync(ctx, channel, sc.Bytes())})
		if len(window) >= 4096 {
			if err := check(false); err != nil {
				return err
			}
		}
	}
	readErr := sc.Err()
	if err := check(true); err != nil {
		return err
	}
	if readErr != nil {
		return fmt.Errorf("reading stdin after %d lines: %w", n, readErr)
	}
	log.Info("published", "lines", n, "channel", channel)
	return nil
}
