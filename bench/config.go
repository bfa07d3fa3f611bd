package bench

import (
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/pubmesh/pubmesh/broker"
)

// Config is the workload and what to run. Zero values mean the documented
// default; Run copies the Config before filling them in.
type Config struct {
	// Channels is how many channels the messages are spread over,
	// round-robin. Every subscriber subscribes to all of them.
	// Default: 64.
	Channels int
	// Publishers is how many goroutines publish, one call per message, in
	// the rows that publish message by message (2, 5, 6, 7). The default
	// matches PipelineWorkers × Batch, so every row has up to as many
	// messages in flight. Default: 512.
	Publishers int
	// PipelineWorkers is how many goroutines publish hand-made pipelines in
	// the rows that pipeline (1, 3, 4). Default: 4.
	PipelineWorkers int
	// Batch is the largest hand-made pipeline (rows 1, 3, 4). Default: 128.
	Batch int
	// Subscribers is how many subscriber connections (fanout clients,
	// WebSocket clients) each receive every message. Default: 4.
	Subscribers int
	// PayloadSize is the size of each message in bytes, timestamp
	// included. Minimum 24. Default: 128.
	PayloadSize int
	// Duration is how long each measurement publishes; the drain comes on
	// top. Default: 5s.
	Duration time.Duration
	// Rate is the offered load of the main table in messages per second
	// over all publishers; 0 publishes as fast as the target takes them
	// (bounded by MaxBacklog). Default: 0 (max).
	Rate float64
	// MaxBacklog bounds, per subscriber, how many published messages may
	// be still undelivered: publishers pause beyond it. It keeps a max-rate
	// run from measuring how fast Redis can fill its output buffers instead
	// of what it delivers. Default: 20000.
	MaxBacklog int
	// Nodes is how many pubmesh nodes rows 5, 6 and 7 use, and how many
	// masters the Redis Cluster of rows 3 and 4 has (at least 3, which
	// redis-cli --cluster create requires). Default: 3.
	Nodes int
	// NodeCounts are the node counts of the scaling table.
	// Default: 1, 2, 3, 4.
	NodeCounts []int
	// LoadFractions are the fractions of row 5's max published rate at
	// which the latency table runs pubmesh, each followed by row 8's
	// cluster (history on) at the same rate where row 8 sustains it, and by
	// plain go-redis (row 2's shape) at the same rate as a reference for
	// what the machine adds. Default: 0.25, 0.5, 0.75.
	LoadFractions []float64
	// Rows selects the rows of the main table (1 to 11) and the WebSocket
	// fan-out rows (12, 13). The scaling and latency tables need pubmesh
	// and run unless SkipScaling/SkipLatency. Default: all.
	Rows []int
	// GatewayBinary is the pubmesh executable whose `pubmesh gateway` the
	// fan-out rows (12, 13) run as a child process; `pubmesh bench` passes
	// itself. Default: none: the fan-out rows are left out.
	GatewayBinary string
	// CompareGateway is another pubmesh executable (an older build) whose
	// gateway the fan-out rows also measure, against the same nodes, for
	// the ratio of gateway CPU per delivered frame. Default: none.
	CompareGateway string
	// Repeat is how many times each main-table row is measured, all rows
	// once and then again (round-robin); a row shows its best attempt (most
	// delivered/s among those without loss) and lists them all. On a
	// shared machine it keeps one burst of outside load from deciding a
	// row. Default: 2.
	Repeat int
	// SkipScaling leaves out the node-count table. Default: false.
	SkipScaling bool
	// SkipLatency leaves out the fixed-rate latency table. Default: false.
	SkipLatency bool
	// Settle is how long the delivered count must stay still, after the
	// publishers stopped, before the rest counts as lost. Default: 1s.
	Settle time.Duration
	// DrainTimeout bounds the wait for deliveries after publishing stops.
	// Default: 15s.
	DrainTimeout time.Duration
	// PubsubBufferLimit is the client-output-buffer-limit for pub/sub
	// clients of every redis-server the benchmark starts, as "HARD SOFT
	// SECONDS" in bytes. The same for every target, and the same as pubmesh
	// nodes use (broker.DefaultOutputBufferLimit).
	// Default: "67108864 16777216 60".
	PubsubBufferLimit string
	// OutDir receives latest.md, latest.json and latest.png; empty writes
	// nothing. Default: "" (the CLI passes bench/results).
	OutDir string
	// Progress receives one line per second while a measurement runs.
	// Default: io.Discard.
	Progress io.Writer
}

// MinPayload is the smallest payload: a quoted 19-digit timestamp and
// padding.
const MinPayload = 24

// DefaultConfig returns the defaults, filled in.
func DefaultConfig() Config { return Config{}.withDefaults() }

func (c Config) withDefaults() Config {
	def := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&c.Channels, 64)
	def(&c.Publishers, 512)
	def(&c.PipelineWorkers, 4)
	def(&c.Batch, 128)
	def(&c.Subscribers, 4)
	def(&c.PayloadSize, 128)
	def(&c.MaxBacklog, 20000)
	def(&c.Nodes, 3)
	def(&c.Repeat, 2)
	if c.Duration <= 0 {
		c.Duration = 5 * time.Second
	}
	if c.Settle <= 0 {
		c.Settle = time.Second
	}
	if c.DrainTimeout <= 0 {
		c.DrainTimeout = 15 * time.Second
	}
	if len(c.NodeCounts) == 0 {
		c.NodeCounts = []int{1, 2, 3, 4}
	}
	if len(c.LoadFractions) == 0 {
		c.LoadFractions = []float64{0.25, 0.5, 0.75}
	}
	if len(c.Rows) == 0 {
		c.Rows = []int{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13}
	}
	if c.PubsubBufferLimit == "" {
		c.PubsubBufferLimit = broker.DefaultOutputBufferLimit.String()
	}
	if c.Progress == nil {
		c.Progress = io.Discard
	}
	c.NodeCounts = append([]int(nil), c.NodeCounts...)
	c.LoadFractions = append([]float64(nil), c.LoadFractions...)
	c.Rows = append([]int(nil), c.Rows...)
	return c
}

// Validate reports the first knob that is out of range, after defaults.
func (c Config) Validate() error {
	c = c.withDefaults()
	switch {
	case c.PayloadSize < MinPayload:
		return fmt.Errorf("bench: payload size %d is below the minimum %d", c.PayloadSize, MinPayload)
	case c.PayloadSize > 1<<20:
		return fmt.Errorf("bench: payload size %d is above 1 MiB", c.PayloadSize)
	case c.Rate < 0:
		return errors.New("bench: negative rate")
	case c.Nodes > 16:
		return fmt.Errorf("bench: %d nodes; at most 16", c.Nodes)
	}
	for _, r := range c.Rows {
		if r < 1 || r > 13 {
			return fmt.Errorf("bench: row %d: rows are 1 to 13", r)
		}
	}
	for _, n := range c.NodeCounts {
		if n < 1 || n > 16 {
			return fmt.Errorf("bench: node count %d: 1 to 16", n)
		}
	}
	for _, f := range c.LoadFractions {
		if f <= 0 || f > 1 {
			return fmt.Errorf("bench: load fraction %g: want (0, 1]", f)
		}
	}
	if _, err := broker.ParseBufferLimit(c.PubsubBufferLimit); err != nil {
		return fmt.Errorf("bench: pubsub buffer limit: %w", err)
	}
	return nil
}

func (c Config) wantRow(r int) bool {
	for _, x := range c.Rows {
		if x == r {
			return true
		}
	}
	return false
}
