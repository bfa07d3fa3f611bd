package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/user"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"
	"gopkg.in/yaml.v3"

	"github.com/pubmesh/pubmesh/clusterconfig"
	"github.com/pubmesh/pubmesh/discovery"
)

func configCommand() *cli.Command {
	common := func(extra ...cli.Flag) []cli.Flag {
		return append(append(etcdFlags(), logLevelFlag("warn")), extra...)
	}
	write := func(extra ...cli.Flag) []cli.Flag {
		return common(append([]cli.Flag{
			&cli.BoolFlag{Name: "dry-run", Usage: "validate and print the diff, write nothing", EnvVars: []string{"PUBMESH_DRY_RUN"}},
			&cli.StringFlag{Name: "author", Usage: "who makes the change, for the history", DefaultText: "user@host", EnvVars: []string{"PUBMESH_AUTHOR"}},
			&cli.StringFlag{Name: "comment", Usage: "why, for the history", DefaultText: "none", EnvVars: []string{"PUBMESH_COMMENT"}},
			&cli.Int64Flag{Name: "if-revision", Usage: "write only if the configuration is still at this revision (the one you read)", DefaultText: "the revision read by this command", EnvVars: []string{"PUBMESH_IF_REVISION"}},
		}, extra...)...)
	}
	return &cli.Command{
		Name:  "config",
		Usage: "read and change the cluster configuration in etcd (namespaces, gateway and node limits)",
		Description: "The cluster configuration is one document in etcd, at <prefix>/<cluster>/config, that every\n" +
			"gateway, fanout client and node agent follows live. Every write is validated (all problems\n" +
			"are reported at once), compare-and-swap on the revision, and recorded in the history.\n" +
			"See docs/operations.md for every key and its default.",
		Subcommands: []*cli.Command{
			{
				Name: "get", Usage: "print the document and its revision", UsageText: "pubmesh config get [--json] [--defaults]",
				Flags: common(
					jsonFlag(`print {"revision": N, "document": {...}} instead of YAML`),
					&cli.BoolFlag{Name: "defaults", Usage: "print every key, with the defaults of those left out", EnvVars: []string{"PUBMESH_DEFAULTS"}},
				),
				Action: runConfigGet,
			},
			{
				Name: "set", Usage: "change one value", UsageText: "pubmesh config set PATH VALUE [--dry-run]\n   e.g. pubmesh config set gateway.max_subscriptions 500\n        pubmesh config set namespaces[0].history_size 100",
				Flags: write(), Action: runConfigSet,
			},
			{
				Name: "unset", Usage: "remove one key (it takes its default) or one namespace", UsageText: "pubmesh config unset PATH [--dry-run]",
				Flags: write(), Action: runConfigSet,
			},
			{
				Name: "apply", Usage: "replace the document with a YAML or JSON file", UsageText: "pubmesh config apply -f FILE [--dry-run]   (FILE - is stdin)",
				Flags:  write(&cli.StringFlag{Name: "file", Aliases: []string{"f"}, Usage: "the document, YAML or JSON (- for stdin)", Required: true, DefaultText: "none, required", EnvVars: []string{"PUBMESH_CONFIG_FILE"}}),
				Action: runConfigApply,
			},
			{
				Name: "history", Usage: "list past revisions: who, when, what changed", UsageText: "pubmesh config history [--json]",
				Flags:  common(jsonFlag("print a JSON array of revisions")),
				Action: runConfigHistory,
			},
			{
				Name: "rollback", Usage: "restore the document of a past revision", UsageText: "pubmesh config rollback REVISION [--dry-run]",
				Flags: write(), Action: runConfigRollback,
			},
		},
	}
}

// configSession is an open registry for one config subcommand.
type configSession struct {
	c   *cli.Context
	reg *discovery.Registry
	ctx context.Context
}

func openConfig(c *cli.Context) (*configSession, func(), error) {
	reg, etcd, err := openClusterRegistry(c)
	if err != nil {
		return nil, nil, err
	}
	ctx, cancel := context.WithTimeout(c.Context, c.Duration("etcd-timeout"))
	return &configSession{c: c, reg: reg, ctx: ctx}, func() { cancel(); etcd.Close() }, nil
}

func runConfigGet(c *cli.Context) error {
	if c.Args().Present() {
		return usageError{fmt.Errorf("unexpected argument %q (see pubmesh config get --help)", c.Args().First())}
	}
	s, done, err := openConfig(c)
	if err != nil {
		return err
	}
	defer done()
	cur, err := s.reg.Config(s.ctx)
	if err != nil {
		return err
	}
	var doc any = map[string]any{}
	if cur.Raw != nil {
		tree, derr := clusterconfig.Decode(cur.Raw)
		if derr != nil {
			doc = string(cur.Raw)
		} else {
			doc = tree
		}
	}
	if c.Bool("defaults") {
		if cur.Doc == nil {
			return fmt.Errorf("revision %d does not validate, so it has no effective form: %v", cur.Revision, cur.Err)
		}
		var full map[string]any
		_ = json.Unmarshal(cur.Doc.JSON(), &full)
		doc = full
	}
	out := c.App.Writer
	if c.Bool("json") {
		b, _ := json.MarshalIndent(map[string]any{"cluster": s.reg.Cluster(), "revision": cur.Revision, "document": doc}, "", "  ")
		fmt.Fprintln(out, string(b))
	} else {
		if cur.Revision == 0 {
			fmt.Fprintf(out, "# cluster %s: no configuration in etcd, the defaults are in force (revision 0)\n", s.reg.Cluster())
		} else {
			fmt.Fprintf(out, "# cluster %s, revision %d\n", s.reg.Cluster(), cur.Revision)
		}
		if m, ok := doc.(map[string]any); ok && len(m) == 0 {
			fmt.Fprintln(out, "{}")
		} else {
			enc := yaml.NewEncoder(out)
			enc.SetIndent(2)
			enc.Encode(doc)
			enc.Close()
		}
	}
	if cur.Err != nil {
		printProblems(c.App.ErrWriter, cur.Err)
		return fmt.Errorf("revision %d in etcd is not valid (written behind pubmesh config's back?): every process keeps running the last good revision; fix it with pubmesh config apply", cur.Revision)
	}
	return nil
}

func runConfigSet(c *cli.Context) error {
	unset := c.Command.Name == "unset"
	want := 2
	if unset {
		want = 1
	}
	if c.NArg() != want {
		return usageError{fmt.Errorf("want %d argument(s), got %d (see pubmesh config %s --help)", want, c.NArg(), c.Command.Name)}
	}
	s, done, err := openConfig(c)
	if err != nil {
		return err
	}
	defer done()
	cur, tree, err := s.current()
	if err != nil {
		return err
	}
	path := c.Args().Get(0)
	if unset {
		err = clusterconfig.Unset(tree, path)
	} else {
		err = clusterconfig.Set(tree, path, clusterconfig.ParseValue(c.Args().Get(1)))
	}
	if err != nil {
		return usageError{err}
	}
	return s.write(cur, tree, 0)
}

func runConfigApply(c *cli.Context) error {
	if c.Args().Present() {
		return usageError{fmt.Errorf("unexpected argument %q: the document goes in -f FILE", c.Args().First())}
	}
	var data []byte
	var err error
	if f := c.String("file"); f == "-" {
		data, err = io.ReadAll(io.LimitReader(os.Stdin, clusterconfig.MaxDocumentBytes+1))
	} else {
		data, err = os.ReadFile(f)
	}
	if err != nil {
		return fmt.Errorf("read the document: %w", err)
	}
	tree, err := clusterconfig.Decode(data)
	if err != nil {
		printProblems(c.App.ErrWriter, err)
		return errors.New("nothing was written")
	}
	s, done, err := openConfig(c)
	if err != nil {
		return err
	}
	defer done()
	cur, _, err := s.current()
	if err != nil {
		return err
	}
	return s.write(cur, tree, 0)
}

func runConfigRollback(c *cli.Context) error {
	if c.NArg() != 1 {
		return usageError{errors.New("want one argument, the revision to restore (see pubmesh config history)")}
	}
	rev, err := strconv.ParseInt(c.Args().First(), 10, 64)
	if err != nil || rev <= 0 {
		return usageError{fmt.Errorf("invalid revision %q", c.Args().First())}
	}
	s, done, err := openConfig(c)
	if err != nil {
		return err
	}
	defer done()
	old, err := s.reg.ConfigAt(s.ctx, rev)
	if err != nil {
		return err
	}
	tree, err := clusterconfig.Decode(old.Document)
	if err != nil {
		return fmt.Errorf("revision %d: %w", rev, err)
	}
	cur, _, err := s.current()
	if err != nil {
		return err
	}
	return s.write(cur, tree, rev)
}

// current reads the configuration and its tree (empty when there is
// none). A stored document that does not decode at all cannot be edited
// in place: apply replaces it.
func (s *configSession) current() (discovery.StoredConfig, map[string]any, error) {
	cur, err := s.reg.Config(s.ctx)
	if err != nil {
		return cur, nil, err
	}
	if cur.Raw == nil {
		return cur, map[string]any{}, nil
	}
	tree, err := clusterconfig.Decode(cur.Raw)
	if err != nil {
		if s.c.Command.Name == "apply" || s.c.Command.Name == "rollback" {
			return cur, nil, nil
		}
		return cur, nil, fmt.Errorf("revision %d in etcd is not a document (%v): replace it with pubmesh config apply", cur.Revision, err)
	}
	return cur, tree, nil
}

// write validates tree, prints its diff against cur and, unless
// --dry-run, writes it if the configuration is still at the expected
// revision.
func (s *configSession) write(cur discovery.StoredConfig, tree map[string]any, rollbackOf int64) error {
	c := s.c
	doc, err := clusterconfig.FromTree(tree)
	if err != nil {
		printProblems(c.App.ErrWriter, err)
		return errors.New("nothing was written")
	}
	out := c.App.Writer
	changes := clusterconfig.Diff(cur.Doc, doc)
	for _, ch := range changes {
		fmt.Fprintln(out, ch)
	}
	if len(changes) == 0 {
		fmt.Fprintln(out, "no change in effect")
	}
	if c.Bool("dry-run") {
		fmt.Fprintf(out, "dry run: valid, nothing written (the configuration is at revision %d)\n", cur.Revision)
		return nil
	}
	expect := cur.Revision
	if c.IsSet("if-revision") {
		expect = c.Int64("if-revision")
	}
	rev, err := s.reg.PutConfig(s.ctx, tree, expect, discovery.ConfigChange{Author: author(c), Comment: c.String("comment"), RollbackOf: rollbackOf})
	var ce *discovery.ConflictError
	if errors.As(err, &ce) {
		return errors.New(ce.Explain("read it again with pubmesh config get, then retry"))
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "revision %d written (was %d)\n", rev, cur.Revision)
	return nil
}

func author(c *cli.Context) string {
	if a := c.String("author"); a != "" {
		return a
	}
	name := "unknown"
	if u, err := user.Current(); err == nil {
		name = u.Username
	}
	host, _ := os.Hostname()
	return name + "@" + host
}

// printProblems lists a validation error's problems, one per line.
func printProblems(w io.Writer, err error) {
	var ve *clusterconfig.ValidationError
	if !errors.As(err, &ve) {
		fmt.Fprintln(w, err)
		return
	}
	fmt.Fprintf(w, "the document has %d problem(s):\n", len(ve.Problems))
	for _, p := range ve.Problems {
		fmt.Fprintln(w, "  "+p.String())
	}
}

func runConfigHistory(c *cli.Context) error {
	if c.Args().Present() {
		return usageError{fmt.Errorf("unexpected argument %q", c.Args().First())}
	}
	s, done, err := openConfig(c)
	if err != nil {
		return err
	}
	defer done()
	hist, err := s.reg.ConfigHistory(s.ctx)
	if err != nil {
		return err
	}
	cur, err := s.reg.Config(s.ctx)
	if err != nil {
		return err
	}
	type row struct {
		Revision   int64     `json:"revision"`
		Author     string    `json:"author"`
		At         time.Time `json:"at"`
		Comment    string    `json:"comment,omitempty"`
		RollbackOf int64     `json:"rollback_of,omitempty"`
		Changes    []string  `json:"changes"`
		summary    string
		Current    bool `json:"current"`
	}
	rows := make([]row, 0, len(hist)+1)
	var prev *clusterconfig.Document
	for _, h := range hist {
		doc, err := clusterconfig.Parse(h.Document)
		r := row{Revision: h.Revision, Author: h.Author, At: h.At, Comment: h.Comment, RollbackOf: h.RollbackOf, Current: h.Revision == cur.Revision}
		if err != nil {
			r.Changes = []string{"(does not validate: " + oneLine(err.Error()) + ")"}
		} else {
			diff := clusterconfig.Diff(prev, doc)
			for _, ch := range diff {
				r.Changes = append(r.Changes, ch.String())
			}
			r.summary = clusterconfig.Summary(diff, 4)
			if len(diff) == 1 {
				r.summary = diff[0].String()
			}
			prev = doc
		}
		rows = append(rows, r)
	}
	if cur.Revision != 0 && (len(hist) == 0 || hist[len(hist)-1].Revision != cur.Revision) {
		what := "(written outside pubmesh config)"
		if cur.Err != nil {
			what += " INVALID, ignored by every process"
		}
		rows = append(rows, row{Revision: cur.Revision, Author: "?", Changes: []string{what}, Current: true})
	}
	if c.Bool("json") {
		b, _ := json.MarshalIndent(rows, "", "  ")
		fmt.Fprintln(c.App.Writer, string(b))
		return nil
	}
	if len(rows) == 0 {
		fmt.Fprintf(c.App.Writer, "no configuration was ever written in cluster %s: the defaults are in force\n", s.reg.Cluster())
		return nil
	}
	tw := tabwriter.NewWriter(c.App.Writer, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "REVISION\tAUTHOR\tWHEN\tCHANGES")
	for _, r := range rows {
		rev := strconv.FormatInt(r.Revision, 10)
		if r.Current {
			rev += " *"
		}
		when := "?"
		if !r.At.IsZero() {
			when = r.At.Local().Format("2006-01-02 15:04:05")
		}
		summary := r.summary
		if summary == "" && len(r.Changes) > 0 {
			summary = r.Changes[0]
		}
		if r.RollbackOf != 0 {
			summary = fmt.Sprintf("rollback to %d: %s", r.RollbackOf, summary)
		}
		if r.Comment != "" {
			summary += " — " + r.Comment
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", rev, r.Author, when, summary)
	}
	return tw.Flush()
}
