package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Result is one measurement: one row of a table.
type Result struct {
	Row   int    `json:"row,omitempty"` // 1 to 7 in the main table
	Key   string `json:"key"`           // e.g. "pubmesh-3"
	Label string `json:"label"`
	Nodes int    `json:"nodes"` // redis-servers of the target
	// Replicas is the fanout Replicas (pubmesh rows only).
	Replicas int `json:"replicas,omitempty"`
	// OfferedRate is the fixed offered load in msg/s, 0 for max.
	OfferedRate float64 `json:"offered_rate"`
	// LoadFraction is the fraction of the max rate (latency table).
	LoadFraction float64 `json:"load_fraction,omitempty"`
	// Reference marks the plain go-redis run beside each pubmesh run of
	// the latency table, at the same offered rate.
	Reference bool `json:"reference,omitempty"`
	// History marks the latency table's run of row 8's cluster (history
	// on for every channel) at the same offered rate as the pubmesh run
	// before it: what history costs at a load both sustain.
	History bool `json:"history,omitempty"`

	Channels    int `json:"channels"`
	Subscribers int `json:"subscribers"`
	PayloadSize int `json:"payload_size"`
	Workers     int `json:"workers"` // publishing goroutines
	Batch       int `json:"batch"`   // messages per publish call

	Seconds       float64 `json:"seconds"` // publishing time
	Published     uint64  `json:"published"`
	Expected      uint64  `json:"expected"` // published × subscribers
	Delivered     uint64  `json:"delivered"`
	Lost          int64   `json:"lost"` // expected − delivered
	Dropped       uint64  `json:"dropped_by_client"`
	PublishErrors uint64  `json:"publish_errors"`
	FirstError    string  `json:"first_error,omitempty"`

	PublishedPerSec float64 `json:"published_per_sec"`
	// DeliveredPerSec is delivered over the time from the first publish
	// to the last delivery.
	DeliveredPerSec float64 `json:"delivered_per_sec"`
	P50us           float64 `json:"p50_us"`
	P99us           float64 `json:"p99_us"`
	P999us          float64 `json:"p999_us"`

	RedisCPUSeconds   float64 `json:"redis_cpu_seconds"`
	ClientCPUSeconds  float64 `json:"client_cpu_seconds"`
	RedisCPUPerMsgUs  float64 `json:"redis_cpu_us_per_delivered"`
	ClientCPUPerMsgUs float64 `json:"client_cpu_us_per_delivered"`

	// LoadAvg is the 1-minute load average when the measurement ended.
	LoadAvg float64 `json:"load_avg"`
	// Attempts are every measurement of a main-table row (Config.Repeat),
	// in order; the row's figures are those of the best one.
	Attempts []Attempt `json:"attempts,omitempty"`

	Err string `json:"error,omitempty"`
}

// Attempt is one measurement of a main-table row, in short.
type Attempt struct {
	PublishedPerSec   float64 `json:"published_per_sec"`
	DeliveredPerSec   float64 `json:"delivered_per_sec"`
	Lost              int64   `json:"lost"`
	P99us             float64 `json:"p99_us"`
	RedisCPUPerMsgUs  float64 `json:"redis_cpu_us_per_delivered"`
	ClientCPUPerMsgUs float64 `json:"client_cpu_us_per_delivered"`
	LoadAvg           float64 `json:"load_avg"`
	Err               string  `json:"error,omitempty"`
}

func attemptOf(r Result) Attempt {
	return Attempt{PublishedPerSec: r.PublishedPerSec, DeliveredPerSec: r.DeliveredPerSec, Lost: r.Lost, P99us: r.P99us,
		RedisCPUPerMsgUs: r.RedisCPUPerMsgUs, ClientCPUPerMsgUs: r.ClientCPUPerMsgUs, LoadAvg: r.LoadAvg, Err: r.Err}
}

// Ratio is one of issue 5's targets, as measured in this run.
type Ratio struct {
	Name  string  `json:"name"`
	Value float64 `json:"value"`
	Op    string  `json:"op"` // ">=" or "<="
	Limit float64 `json:"limit"`
	Unit  string  `json:"unit,omitempty"`
	Met   bool    `json:"met"`
	// Missing says why the ratio could not be computed.
	Missing string `json:"missing,omitempty"`
}

// Workload is the Config a report was measured with.
type Workload struct {
	Channels          int       `json:"channels"`
	Publishers        int       `json:"publishers"`
	PipelineWorkers   int       `json:"pipeline_workers"`
	Batch             int       `json:"batch"`
	Subscribers       int       `json:"subscribers"`
	PayloadSize       int       `json:"payload_size"`
	Duration          string    `json:"duration"`
	Rate              float64   `json:"rate"` // 0: max
	MaxBacklog        int       `json:"max_backlog"`
	Nodes             int       `json:"nodes"`
	NodeCounts        []int     `json:"node_counts"`
	LoadFractions     []float64 `json:"load_fractions"`
	PubsubBufferLimit string    `json:"pubsub_buffer_limit"`
	Repeat            int       `json:"repeat"`
}

func workloadOf(c Config) Workload {
	return Workload{
		Channels: c.Channels, Publishers: c.Publishers, PipelineWorkers: c.PipelineWorkers, Batch: c.Batch,
		Subscribers: c.Subscribers, PayloadSize: c.PayloadSize, Duration: c.Duration.String(), Rate: c.Rate,
		MaxBacklog: c.MaxBacklog, Nodes: c.Nodes, NodeCounts: c.NodeCounts, LoadFractions: c.LoadFractions,
		PubsubBufferLimit: c.PubsubBufferLimit, Repeat: c.Repeat,
	}
}

// Report is everything one Run measured.
type Report struct {
	Started  time.Time `json:"started"`
	Finished time.Time `json:"finished"`
	Command  string    `json:"command,omitempty"`
	Machine  Machine   `json:"machine"`
	Config   Workload  `json:"config"`
	// LoadAvg is /proc/loadavg's 1-minute load at the start and the end:
	// on a shared machine it says how much else was running.
	LoadAvg [2]float64 `json:"load_avg_start_end"`
	Rows    []Result   `json:"rows"`
	Scaling []Result   `json:"scaling"`
	Latency []Result   `json:"latency"`
	// Fanout are the WebSocket fan-out rows (12, 13), this build's gateway
	// and, with Config.CompareGateway, the other one's beside it.
	Fanout []FanoutResult `json:"fanout,omitempty"`
	Ratios []Ratio        `json:"ratios"`
	// ServersStarted and ServersLeft count the redis-servers the run
	// started and those still alive at the end (should be 0).
	ServersStarted int   `json:"servers_started"`
	ServersLeft    []int `json:"servers_left,omitempty"`
}

// Failed reports whether any measurement ended in an error.
func (r *Report) Failed() bool {
	for _, set := range [][]Result{r.Rows, r.Scaling, r.Latency} {
		for _, x := range set {
			if x.Err != "" {
				return true
			}
		}
	}
	for _, x := range r.Fanout {
		if x.Err != "" {
			return true
		}
	}
	return len(r.ServersLeft) > 0
}

// row returns main-table row n, if measured without error.
func (r *Report) row(n int) (Result, bool) {
	for _, x := range r.Rows {
		if x.Row == n && x.Err == "" {
			return x, true
		}
	}
	return Result{}, false
}

func (r *Report) computeRatios() {
	r.Ratios = nil
	pair := func(name string, a, b int, f func(Result) float64, op string, limit float64) {
		ra, oka := r.row(a)
		rb, okb := r.row(b)
		x := Ratio{Name: name, Op: op, Limit: limit, Unit: "×"}
		switch {
		case !oka || !okb:
			x.Missing = fmt.Sprintf("row %d or %d not measured", a, b)
		case f(rb) == 0:
			x.Missing = fmt.Sprintf("row %d is zero", b)
		default:
			x.Value = f(ra) / f(rb)
			x.Met = op == "" || compare(x.Value, op, limit) // no op: informational
		}
		r.Ratios = append(r.Ratios, x)
	}
	deliv := func(x Result) float64 { return x.DeliveredPerSec }
	cpu := func(x Result) float64 { return x.RedisCPUPerMsgUs }
	pair("row 5 delivered/s ÷ row 1", 5, 1, deliv, ">=", 1.0)
	pair("row 5 delivered/s ÷ row 2", 5, 2, deliv, ">=", 3.0)
	pair("row 5 Redis CPU/msg ÷ row 3", 5, 3, cpu, "<=", 0.35)
	// History (issue 12): on costs at most 1.5x off, per delivered message.
	pair("row 8 (history on) Redis CPU/msg ÷ row 5", 8, 5, cpu, "<=", 1.5)
	pair("row 8 (history on) client CPU/msg ÷ row 5", 8, 5, func(x Result) float64 { return x.ClientCPUPerMsgUs }, "<=", 1.5)
	pair("row 5 delivered/s ÷ row 8 (history on)", 5, 8, deliv, "<=", 1.5)
	// Issue 14: the fanout client against the hand-written go-redis client.
	pair("row 9 (PublishAsync, 1 goroutine) delivered/s ÷ row 1", 9, 1, deliv, ">=", 1.0)
	pair("row 5 delivered/s ÷ row 4 (SPUBLISH)", 5, 4, deliv, ">=", 1.0)
	pair("row 9 (PublishAsync) client CPU/msg ÷ row 1", 9, 1, func(x Result) float64 { return x.ClientCPUPerMsgUs }, "<=", 1.0)
	pair("row 9 (PublishAsync) Redis CPU/msg ÷ row 1", 9, 1, cpu, "<=", 1.1)
	// Issue 13: what permessage-deflate costs the gateway (informational).
	pair("row 11 gateway (compression on) client CPU/msg ÷ row 7", 11, 7, func(x Result) float64 { return x.ClientCPUPerMsgUs }, "", 0)
	x := Ratio{Name: "pubmesh p99 at 50% of max", Op: "<=", Limit: 2, Unit: "ms", Missing: "no 50% latency run"}
	for _, l := range r.Latency {
		if l.LoadFraction == 0.5 && !l.Reference && !l.History && l.Err == "" {
			x.Value, x.Missing = l.P99us/1000, ""
			x.Met = compare(x.Value, "<=", 2)
		}
	}
	r.Ratios = append(r.Ratios, x)
	r.Ratios = append(r.Ratios, r.historyAtRateRatios()...)
	r.Ratios = append(r.Ratios, r.fanoutRatios()...)
}

// historyAtRateRatios compares history on with off at the same offered
// rate (issue 12's cost per delivered message, at a load both sustain),
// at the highest fraction of the latency table that has both runs.
func (r *Report) historyAtRateRatios() []Ratio {
	var off, on Result
	for _, l := range r.Latency {
		if !l.History || l.Err != "" || l.LoadFraction < on.LoadFraction {
			continue
		}
		for _, o := range r.Latency {
			if o.LoadFraction == l.LoadFraction && !o.History && !o.Reference && o.Err == "" {
				off, on = o, l
			}
		}
	}
	names := []string{"Redis CPU/msg", "client CPU/msg", "p99"}
	vals := []func(Result) float64{
		func(x Result) float64 { return x.RedisCPUPerMsgUs },
		func(x Result) float64 { return x.ClientCPUPerMsgUs },
		func(x Result) float64 { return x.P99us },
	}
	out := make([]Ratio, len(names))
	for i, n := range names {
		x := Ratio{Name: "history on ÷ off at the same offered rate, " + n, Op: "<=", Limit: 1.5, Unit: "×",
			Missing: "no history-on run in the latency table"}
		if on.Key != "" {
			x.Name = fmt.Sprintf("history on ÷ off at %.0f%% of row 5's max (%s msg/s), %s", on.LoadFraction*100, si(on.OfferedRate), n)
			if b := vals[i](off); b > 0 {
				x.Value, x.Missing = vals[i](on)/b, ""
				x.Met = compare(x.Value, "<=", 1.5)
			}
		}
		out[i] = x
	}
	return out
}

func compare(v float64, op string, limit float64) bool {
	if op == ">=" {
		return v >= limit
	}
	return v <= limit
}

// Markdown writes the tables.
func (r *Report) Markdown(w io.Writer) {
	c := r.Config
	rate := "max"
	if c.Rate > 0 {
		rate = fmt.Sprintf("%.0f msg/s", c.Rate)
	}
	fmt.Fprintf(w, "## pubmesh benchmark, %s\n\n", r.Started.UTC().Format("2006-01-02 15:04 MST"))
	fmt.Fprintf(w, "Machine: %s. Workload: %d channels, %d subscribers each on every channel, %d-byte payloads, "+
		"%s per measurement, offered rate %s; %d publishing goroutines (rows 2, 5, 6, 7, 8) or %d pipelining goroutines "+
		"with pipelines of up to %d (rows 1, 3, 4); row 9: one goroutine calling PublishAsync, up to 1024 unanswered; row 10: 4 goroutines calling Publish; at most %d undelivered messages per subscriber; pub/sub output "+
		"buffer limit %q on every redis-server.\n\n",
		r.Machine.Summary(), c.Channels, c.Subscribers, c.PayloadSize, c.Duration, rate, c.Publishers,
		c.PipelineWorkers, c.Batch, c.MaxBacklog, c.PubsubBufferLimit)
	fmt.Fprintln(w, "### Targets side by side")
	fmt.Fprintln(w)
	table(w, r.Rows, func(x Result) string { return fmt.Sprintf("%d %s", x.Row, x.Label) }, "target")
	if c.Repeat > 1 && len(r.Rows) > 0 {
		fmt.Fprintf(w, "Each row was measured %d times, round-robin; the table shows the attempt with the most delivered/s "+
			"among those that lost nothing. Every attempt (delivered/s, lost, Redis CPU µs/msg, load average):\n\n", c.Repeat)
		for _, x := range r.Rows {
			var parts []string
			for _, a := range x.Attempts {
				if a.Err != "" {
					parts = append(parts, "error")
					continue
				}
				parts = append(parts, fmt.Sprintf("%s/s, lost %d, %.2f µs, load %.1f", si(a.DeliveredPerSec), a.Lost, a.RedisCPUPerMsgUs, a.LoadAvg))
			}
			fmt.Fprintf(w, "- row %d: %s\n", x.Row, strings.Join(parts, "; "))
		}
		fmt.Fprintln(w)
	}
	if len(r.Scaling) > 0 {
		fmt.Fprintln(w, "### pubmesh by node count (max rate)")
		fmt.Fprintln(w)
		table(w, r.Scaling, func(x Result) string { return fmt.Sprintf("%d", x.Nodes) }, "nodes")
	}
	if len(r.Latency) > 0 {
		fmt.Fprintln(w, "### pubmesh latency at fixed offered rates")
		fmt.Fprintln(w)
		table(w, r.Latency, func(x Result) string {
			who := "pubmesh"
			switch {
			case x.Reference:
				who = "go-redis 1 node, per call (reference)"
			case x.History:
				who = "pubmesh, history on (row 8's cluster)"
			}
			return fmt.Sprintf("%.0f%% (%s msg/s), %s", x.LoadFraction*100, si(x.OfferedRate), who)
		}, "offered")
	}
	r.fanoutMarkdown(w)
	if len(r.Ratios) > 0 {
		fmt.Fprintln(w, "### Targets (issues 5, 12, 14), measured in this run")
		fmt.Fprintln(w)
		fmt.Fprintln(w, "| target | measured | limit | met |")
		fmt.Fprintln(w, "|---|---:|---:|---|")
		for _, x := range r.Ratios {
			limit := fmt.Sprintf("%s %g%s", x.Op, x.Limit, x.Unit)
			if x.Op == "" {
				limit = "none (informational)"
			}
			if x.Missing != "" {
				fmt.Fprintf(w, "| %s | – | %s | not measured: %s |\n", x.Name, limit, x.Missing)
				continue
			}
			met := "yes"
			switch {
			case x.Op == "":
				met = "–"
			case !x.Met:
				met = "**no**"
			}
			fmt.Fprintf(w, "| %s | %.2f%s | %s | %s |\n", x.Name, x.Value, x.Unit, limit, met)
		}
		fmt.Fprintln(w)
	}
	left := "none left running"
	if len(r.ServersLeft) > 0 {
		left = fmt.Sprintf("STILL RUNNING: PIDs %v", r.ServersLeft)
	}
	fmt.Fprintf(w, "redis-servers started and stopped by PID: %d, %s. Run took %s; 1-minute load average %.2f at the start, %.2f at the end.\n",
		r.ServersStarted, left, r.Finished.Sub(r.Started).Round(time.Second), r.LoadAvg[0], r.LoadAvg[1])
}

func table(w io.Writer, rows []Result, name func(Result) string, head string) {
	fmt.Fprintf(w, "| %s | published/s | delivered/s | lost | p50 | p99 | p99.9 | Redis CPU µs/msg | client CPU µs/msg |\n", head)
	fmt.Fprintln(w, "|---|---:|---:|---:|---:|---:|---:|---:|---:|")
	var notes []string
	for _, x := range rows {
		if x.Err != "" {
			fmt.Fprintf(w, "| %s | error: %s ||||||||\n", name(x), strings.ReplaceAll(x.Err, "|", "/"))
			continue
		}
		fmt.Fprintf(w, "| %s | %s | %s | %d | %s | %s | %s | %.2f | %.2f |\n", name(x),
			si(x.PublishedPerSec), si(x.DeliveredPerSec), x.Lost, ms(x.P50us), ms(x.P99us), ms(x.P999us),
			x.RedisCPUPerMsgUs, x.ClientCPUPerMsgUs)
		if x.PublishErrors > 0 {
			notes = append(notes, fmt.Sprintf("%s: %d publish errors, first: %s", name(x), x.PublishErrors, x.FirstError))
		}
		if x.Dropped > 0 {
			notes = append(notes, fmt.Sprintf("%s: %d messages dropped by full subscription buffers", name(x), x.Dropped))
		}
	}
	fmt.Fprintln(w)
	for _, n := range notes {
		fmt.Fprintf(w, "- %s\n", n)
	}
	if len(notes) > 0 {
		fmt.Fprintln(w)
	}
}

// ms formats microseconds as milliseconds.
func ms(v float64) string {
	if v < 10000 {
		return fmt.Sprintf("%.2f ms", v/1000)
	}
	return fmt.Sprintf("%.0f ms", v/1000)
}

// WriteFiles writes latest.md, latest.json and latest.png into dir.
func (r *Report) WriteFiles(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	var md strings.Builder
	r.Markdown(&md)
	if err := writeAtomic(filepath.Join(dir, "latest.md"), []byte(md.String())); err != nil {
		return err
	}
	js, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	if err := writeAtomic(filepath.Join(dir, "latest.json"), append(js, '\n')); err != nil {
		return err
	}
	png, err := r.Chart()
	if err != nil {
		return err
	}
	return writeAtomic(filepath.Join(dir, "latest.png"), png)
}

// writeAtomic writes name through a .tmp file and a rename.
func writeAtomic(name string, data []byte) error {
	tmp := name + ".tmp"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	if err := os.Rename(tmp, name); err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	return nil
}
