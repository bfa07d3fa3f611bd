package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/pubmesh/pubmesh/fanout"
)

func subscribeCommand() *cli.Command {
	return &cli.Command{
		Name:      "subscribe",
		Usage:     "print the messages of channels (or patterns) as they arrive",
		ArgsUsage: "CHANNEL...",
		Description: "Prints each payload on its own line; --json prints one JSON object per message with\n" +
			"channel, pattern, id, time, node and payload. Stops cleanly on Ctrl-C.",
		Flags: append(fanoutFlags(),
			&cli.BoolFlag{Name: "pattern", Aliases: []string{"p"}, Usage: "treat the arguments as glob patterns (news.*)", EnvVars: []string{"PUBMESH_PATTERN"}},
			&cli.BoolFlag{Name: "json", Usage: "print one JSON object per message", EnvVars: []string{"PUBMESH_JSON"}},
			&cli.IntFlag{Name: "count", Aliases: []string{"n"}, Usage: "exit after this many messages (0: never)", EnvVars: []string{"PUBMESH_COUNT"}},
		),
		Action: subscribeAction,
	}
}

type jsonMessage struct {
	Channel string    `json:"channel"`
	Pattern string    `json:"pattern,omitempty"`
	ID      string    `json:"id,omitempty"`
	Time    time.Time `json:"time,omitzero"`
	Node    string    `json:"node"`
	Payload string    `json:"payload"`
}

func subscribeAction(c *cli.Context) error {
	if c.NArg() < 1 {
		return usageError{errors.New("want at least one CHANNEL (see pubmesh subscribe --help)")}
	}
	// Block, not DropOldest: a terminal or a pipe that is slower than the
	// feed should slow the feed down rather than lose lines.
	client, log, done, err := openFanout(c, c.Args().Slice(), fanout.Block)
	if err != nil {
		return err
	}
	defer done()
	ctx := c.Context
	subscribe := client.Subscribe
	if c.Bool("pattern") {
		subscribe = client.PSubscribe
	}
	sub, err := subscribe(ctx, c.Args().Slice()...)
	if err != nil {
		return err
	}
	defer sub.Close()
	log.Info("subscribed", "channels", c.Args().Slice())
	out := bufio.NewWriterSize(c.App.Writer, 64<<10)
	defer out.Flush()
	enc := json.NewEncoder(out)
	limit, seen := c.Int("count"), 0
	for {
		var m *fanout.Message
		select {
		case m = <-sub.Messages():
		default: // nothing queued: show what we have before waiting
			if err := out.Flush(); err != nil {
				return fmt.Errorf("writing output: %w", err)
			}
			select {
			case m = <-sub.Messages():
			case <-ctx.Done():
				return nil
			}
		}
		if m == nil {
			return nil
		}
		if c.Bool("json") {
			err = enc.Encode(jsonMessage{Channel: m.Channel, Pattern: m.Pattern, ID: m.ID(), Time: m.PublishedAt, Node: m.Node, Payload: string(m.Payload)})
		} else {
			out.Write(m.Payload)
			err = out.WriteByte('\n')
		}
		if err != nil {
			return fmt.Errorf("writing output: %w", err)
		}
		if seen++; limit > 0 && seen >= limit {
			return nil
		}
	}
}
