package main

import (
	"strconv"
	"strings"

	"github.com/urfave/cli/v2"
)

// hoistFlags moves a command's flags in front of its arguments, so that
// `pubmesh subscribe news --json` means what it says: urfave/cli stops
// parsing flags at the first argument, and "--json" would otherwise be taken
// as a channel name. A "--" ends the flags: what follows stays an argument
// even if it starts with "-". Unknown flags are moved too, so the library
// refuses them with its usual message.
func hoistFlags(app *cli.App, args []string) []string {
	if len(args) < 3 {
		return args
	}
	cmd := app.Command(args[1])
	if cmd == nil || cmd.SkipFlagParsing {
		return args // a command that parses its own (devtools.go) gets them as given
	}
	head := 2 // args[:head] is the program and the command path
	// Walk down subcommands (pubmesh config set ...).
	for head < len(args) {
		sub := cmd.Command(args[head])
		if sub == nil {
			break
		}
		cmd, head = sub, head+1
	}
	takesValue := map[string]bool{}
	for _, f := range cmd.Flags {
		tv := true
		if v, ok := f.(interface{ TakesValue() bool }); ok {
			tv = v.TakesValue()
		}
		for _, n := range f.Names() {
			takesValue[n] = tv
		}
	}
	var flags, rest []string
	for i := head; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "--":
			rest = append(rest, args[i+1:]...)
			i = len(args)
		case len(a) > 1 && a[0] == '-' && !isNumber(a):
			flags = append(flags, a)
			name, _, hasValue := strings.Cut(strings.TrimLeft(a, "-"), "=")
			if !hasValue && takesValue[name] && i+1 < len(args) {
				i++
				flags = append(flags, args[i])
			}
		default:
			rest = append(rest, a)
		}
	}
	if len(rest) > 0 {
		// Whatever was left is arguments; "--" keeps one that starts with
		// "-" (only possible after a "--" of the user's) from being parsed.
		rest = append([]string{"--"}, rest...)
	}
	out := append(append([]string{}, args[:head]...), flags...)
	return append(out, rest...)
}

// isNumber: "-1" is a value (pubmesh config set gateway.publish_rate -1 is
// then refused by validation, with a reason), not an unknown flag.
func isNumber(s string) bool {
	_, err := strconv.ParseFloat(s, 64)
	return err == nil
}
