package main

import (
	"bufio"
	"errors"
	"fmt"

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
			"and exits 0 only when every line was accepted by a node. Example: seq 1 100000 | pubmesh publish news",
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
	// One Publish at a time keeps the lines in order on the channel.
	sc := bufio.NewScanner(c.App.Reader)
	sc.Buffer(make([]byte, 64<<10), maxLine)
	n := 0
	for sc.Scan() {
		if err := client.Publish(ctx, channel, sc.Bytes()); err != nil {
			return fmt.Errorf("line %d: %w (%d lines published before it)", n+1, err, n)
		}
		n++
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("reading stdin after %d lines: %w", n, err)
	}
	log.Info("published", "lines", n, "channel", channel)
	return nil
}
