package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/urfave/cli/v2"

	"github.com/pubmesh/pubmesh/fanout"
)

func historyCommand() *cli.Command {
	return &cli.Command{
		Name:      "history",
		Usage:     "print a channel's history (channels whose namespace has history_size > 0)",
		ArgsUsage: "CHANNEL",
		Description: "Prints the messages the nodes keep for CHANNEL, oldest first, one payload per line;\n" +
			"With --json, one JSON object per message (as pubmesh subscribe --json, with pos) and a last\n" +
			"object {\"pos\": ..., \"recovered\": ...}. With --since POS, only what came after that\n" +
			"position, and whether history still had all of it (docs/history.md).",
		Flags: append(fanoutFlags(),
			&cli.StringFlag{Name: "since", Usage: "only the messages after this position", DefaultText: "none: all the history kept", EnvVars: []string{"PUBMESH_SINCE"}},
			&cli.IntFlag{Name: "limit", Aliases: []string{"n"}, Usage: "at most this many messages, the oldest (the newest with --reverse); 0: all", EnvVars: []string{"PUBMESH_LIMIT"}},
			&cli.BoolFlag{Name: "reverse", Usage: "newest first", EnvVars: []string{"PUBMESH_REVERSE"}},
			jsonFlag("print one JSON object per message, then one with the position and whether it is complete"),
		),
		Action: historyAction,
	}
}

func historyAction(c *cli.Context) error {
	if c.NArg() != 1 {
		return usageError{errors.New("want one CHANNEL (see pubmesh history --help)")}
	}
	if c.Int("limit") < 0 {
		return usageError{errors.New("--limit must not be negative")}
	}
	if since := c.String("since"); since != "" {
		if err := fanout.CheckPosition(since); err != nil {
			return usageError{fmt.Errorf("invalid --since: %w", err)}
		}
	}
	channel := c.Args().First()
	client, _, done, err := openFanout(c, []string{channel}, fanout.Block)
	if err != nil {
		return err
	}
	defer done()
	h, err := client.History(c.Context, channel, fanout.HistoryOptions{Since: c.String("since"), Limit: c.Int("limit"), Reverse: c.Bool("reverse")})
	if errors.Is(err, fanout.ErrBadPosition) {
		return usageError{fmt.Errorf("invalid --since: %w", err)}
	}
	if errors.Is(err, fanout.ErrNoHistory) {
		return fmt.Errorf("%w: switch it on with e.g. pubmesh config set namespaces[0] \"{match: '%s', history_size: 100}\"", err, channel)
	}
	if err != nil {
		return err
	}
	out := bufio.NewWriterSize(c.App.Writer, 64<<10)
	defer out.Flush()
	enc := json.NewEncoder(out)
	for _, m := range h.Messages {
		if c.Bool("json") {
			err = enc.Encode(jsonMessage{Channel: m.Channel, ID: m.ID(), Time: m.PublishedAt, Node: m.Node, Payload: string(m.Payload), Pos: m.Position()})
		} else {
			out.Write(m.Payload)
			err = out.WriteByte('\n')
		}
		if err != nil {
			return fmt.Errorf("writing output: %w", err)
		}
	}
	if c.Bool("json") {
		return enc.Encode(struct {
			Pos       string `json:"pos"`
			Recovered bool   `json:"recovered"`
			Count     int    `json:"count"`
		}{h.Position, h.Recovered, len(h.Messages)})
	}
	if err := out.Flush(); err != nil { // the messages before the summary on stderr
		return fmt.Errorf("writing output: %w", err)
	}
	if c.IsSet("since") && !h.Recovered {
		fmt.Fprintln(c.App.ErrWriter, "NOT recovered: history no longer has everything since that position")
	}
	fmt.Fprintf(c.App.ErrWriter, "%d message(s); resume after them with --since %s\n", len(h.Messages), h.Position)
	return nil
}
