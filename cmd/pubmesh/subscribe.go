package main

import (
	"bufio"
	"context"
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
			"channel, pattern, id, time, node, payload and, on channels with history, pos (its position).\n" +
			"With --since POS (one channel) it first prints every message after that position, from\n" +
			"history, then the live ones, with no gap and no duplicate; it says on stderr whether history\n" +
			"still had everything (see docs/history.md). Stops cleanly on Ctrl-C.",
		Flags: append(fanoutFlags(),
			&cli.BoolFlag{Name: "pattern", Aliases: []string{"p"}, Usage: "treat the arguments as glob patterns (news.*)", EnvVars: []string{"PUBMESH_PATTERN"}},
			&cli.BoolFlag{Name: "json", Usage: "print one JSON object per message", EnvVars: []string{"PUBMESH_JSON"}},
			&cli.IntFlag{Name: "count", Aliases: []string{"n"}, Usage: "exit after this many messages (0: never)", EnvVars: []string{"PUBMESH_COUNT"}},
			&cli.StringFlag{Name: "since", Usage: "resume the channel after this position (a message's pos, from --json or pubmesh history)", DefaultText: "none: live messages only", EnvVars: []string{"PUBMESH_SINCE"}},
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
	Pos     string    `json:"pos,omitempty"`
}

func subscribeAction(c *cli.Context) error {
	if c.NArg() < 1 {
		return usageError{errors.New("want at least one CHANNEL (see pubmesh subscribe --help)")}
	}
	// Bad flags are refused before connecting: the answer must not wait
	// for etcd or the nodes.
	since := c.String("since")
	if since != "" {
		if c.NArg() != 1 || c.Bool("pattern") {
			return usageError{errors.New("--since resumes one channel: give exactly one CHANNEL, not a pattern")}
		}
		if err := fanout.CheckPosition(since); err != nil {
			return usageError{fmt.Errorf("invalid --since: %w", err)}
		}
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
	if since != "" {
		ch := c.Args().First()
		subscribe = func(ctx context.Context, channels ...string) (*fanout.Subscription, error) {
			return client.SubscribeWith(ctx, fanout.SubscribeOptions{Since: map[string]string{ch: since}}, channels...)
		}
	}
	sub, err := subscribe(ctx, c.Args().Slice()...)
	if errors.Is(err, fanout.ErrBadPosition) {
		return usageError{fmt.Errorf("invalid --since: %w", err)}
	}
	if err != nil {
		return err
	}
	defer sub.Close()
	log.Info("subscribed", "channels", c.Args().Slice())
	if since != "" {
		rec, _ := sub.Recovery(c.Args().First())
		if rec.Recovered {
			fmt.Fprintf(c.App.ErrWriter, "recovered: %d message(s) from history, nothing missing\n", rec.Messages)
		} else {
			fmt.Fprintf(c.App.ErrWriter, "NOT recovered: history no longer has everything since that position; printing the %d message(s) it has, then live\n", rec.Messages)
		}
	}
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
			err = enc.Encode(jsonMessage{Channel: m.Channel, Pattern: m.Pattern, ID: m.ID(), Time: m.PublishedAt, Node: m.Node, Payload: string(m.Payload), Pos: m.Position()})
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
