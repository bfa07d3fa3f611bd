package bench

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
)

// Why this file exists: rows 12 and 13 have another shape than the main
// table's. Many WebSocket clients, each subscribed to one of a few
// channels, and a few publishers posting to the gateway's HTTP API; what
// counts is the gateway's own cost: frames it delivers per second, its CPU
// per delivered frame and its memory per connection. So the gateway runs
// as a child process (`pubmesh gateway`, this build's, or with
// Config.CompareGateway another build's, against the same nodes), measured
// from /proc, and the rows get a table of their own (FanoutResult).

// fanoutSpec is one fan-out row.
type fanoutSpec struct {
	row      int
	key      string
	clients  int
	channels int
}

func fanoutSpecs() []fanoutSpec {
	return []fanoutSpec{
		{row: 12, key: "ws-fanout-1k", clients: 1000, channels: 10},
		{row: 13, key: "ws-fanout-5k", clients: 5000, channels: 100},
	}
}

func (s fanoutSpec) label() string {
	return fmt.Sprintf("WebSocket fan-out, %s clients over %d channels", thousands(s.clients), s.channels)
}

// thousands writes n with a thin space between thousands ("5 000").
func thousands(n int) string {
	s := strconv.Itoa(n)
	if len(s) <= 3 {
		return s
	}
	return s[:len(s)-3] + " " + s[len(s)-3:]
}

// fanoutPayload is the size of a fan-out row's payloads.
const fanoutPayload = 64

// fanoutPublishers is how many goroutines post messages in a fan-out row.
const fanoutPublishers = 8

// fanoutBacklog is how many frames per client may be published but not
// delivered before the publishers pause: well under the gateway's send
// queue (fanoutSendQueue), so that no client is closed as slow.
const (
	fanoutBacklog   = 64
	fanoutSendQueue = 4096
)

// FanoutResult is one measurement of a fan-out row.
type FanoutResult struct {
	Row   int    `json:"row"`
	Key   string `json:"key"`
	Label string `json:"label"`
	// Gateway is the binary that served it: "this build" or the path
	// given as Config.CompareGateway.
	Gateway     string `json:"gateway"`
	Baseline    bool   `json:"baseline,omitempty"` // the CompareGateway run
	Clients     int    `json:"clients"`
	Channels    int    `json:"channels"`
	Nodes       int    `json:"nodes"`
	PayloadSize int    `json:"payload_size"`

	Seconds         float64 `json:"seconds"` // publishing time
	Published       uint64  `json:"published"`
	Expected        uint64  `json:"expected"` // frames owed: published × clients of its channel
	Delivered       uint64  `json:"delivered"`
	Lost            int64   `json:"lost"`
	PublishErrors   uint64  `json:"publish_errors"`
	FirstError      string  `json:"first_error,omitempty"`
	PublishedPerSec float64 `json:"published_per_sec"`
	DeliveredPerSec float64 `json:"delivered_per_sec"`

	GatewayCPUSeconds    float64 `json:"gateway_cpu_seconds"`
	GatewayCPUPerFrameUs float64 `json:"gateway_cpu_us_per_frame"`
	// RSSPerConnKiB is the gateway's VmRSS growth from before the clients
	// connected to after they all subscribed (idle), per connection.
	RSSPerConnKiB float64 `json:"rss_kib_per_connection"`
	// FramesPerBatch is message frames written per flush to a client
	// socket (the gateway's pubmesh_ws_messages_out_total over
	// pubmesh_ws_write_batches_total during the measurement): the frames
	// each writer wake-up carries.
	FramesPerBatch float64 `json:"frames_per_batch"`

	Err string `json:"error,omitempty"`
}

// measureFanout runs spec against binary's gateway on pt's nodes.
func measureFanout(ctx context.Context, e *env, pt *pubmeshTarget, spec fanoutSpec, binary string) (FanoutResult, error) {
	cfg := e.cfg
	res := FanoutResult{Row: spec.row, Key: spec.key, Label: spec.label(), Clients: spec.clients, Channels: spec.channels,
		Nodes: len(pt.nodes), PayloadSize: fanoutPayload}
	gw, err := startGatewayProcess(ctx, binary, e.etcd.endpoint(), pt.cluster)
	if err != nil {
		return res, err
	}
	defer gw.stop()
	rss0, err := gw.rss()
	if err != nil {
		return res, err
	}
	channels := make([]string, spec.channels)
	for i := range channels {
		channels[i] = fmt.Sprintf("fan.ch%03d", i)
	}
	fc, err := dialFanoutClients(ctx, gw.wsURL(), channels, spec.clients)
	if fc != nil {
		defer fc.close()
	}
	if err != nil {
		return res, err
	}
	time.Sleep(time.Second) // the gateway settles: GC, buffers back in pools
	rss1, err := gw.rss()
	if err != nil {
		return res, err
	}
	res.RSSPerConnKiB = float64(rss1-rss0) / 1024 / float64(spec.clients)

	subsOf := make([]uint64, spec.channels) // clients per channel
	for i := range spec.clients {
		subsOf[i%spec.channels]++
	}
	m0 := gw.metrics()
	cpu0, err := gw.cpu()
	if err != nil {
		return res, err
	}
	var (
		published, expected, failed atomic.Uint64
		errOnce                     sync.Once
		wg                          sync.WaitGroup
	)
	tr := &http.Transport{MaxIdleConnsPerHost: fanoutPublishers}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	start := time.Now()
	deadline := start.Add(cfg.Duration)
	payload := []byte(`"` + strings.Repeat("x", fanoutPayload-2) + `"`)
	for w := range fanoutPublishers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := w; time.Now().Before(deadline) && ctx.Err() == nil; k += fanoutPublishers {
				for expected.Load()-fc.delivered() > uint64(fanoutBacklog*spec.clients) && ctx.Err() == nil {
					time.Sleep(100 * time.Microsecond)
				}
				ch := k % spec.channels
				resp, err := hc.Post(gw.url+"/api/publish/"+channels[ch], "application/json", bytes.NewReader(payload))
				if err == nil {
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode != http.StatusOK {
						err = fmt.Errorf("publish: HTTP %d", resp.StatusCode)
					}
				}
				if err != nil {
					failed.Add(1)
					errOnce.Do(func() { res.FirstError = err.Error() })
					continue
				}
				published.Add(1)
				expected.Add(subsOf[ch])
			}
		}()
	}
	wg.Wait()
	pubEnd := time.Now()
	// Drain: until every frame arrived, or the count stays still.
	last, lastChange := fc.delivered(), time.Now()
	for fc.delivered() < expected.Load() && time.Since(lastChange) < cfg.Settle && time.Since(pubEnd) < cfg.DrainTimeout {
		time.Sleep(5 * time.Millisecond)
		if d := fc.delivered(); d != last {
			last, lastChange = d, time.Now()
		}
	}
	cpu1, err := gw.cpu()
	if err != nil {
		return res, err
	}
	m1 := gw.metrics()
	res.Seconds = pubEnd.Sub(start).Seconds()
	res.Published, res.Expected, res.Delivered = published.Load(), expected.Load(), fc.delivered()
	res.Lost = int64(res.Expected) - int64(res.Delivered)
	res.PublishErrors = failed.Load()
	res.PublishedPerSec = float64(res.Published) / res.Seconds
	if end := fc.lastDelivery(); end.After(start) {
		res.DeliveredPerSec = float64(res.Delivered) / end.Sub(start).Seconds()
	}
	res.GatewayCPUSeconds = (cpu1 - cpu0).Seconds()
	if res.Delivered > 0 {
		res.GatewayCPUPerFrameUs = res.GatewayCPUSeconds * 1e6 / float64(res.Delivered)
	}
	if b := m1["pubmesh_ws_write_batches_total"] - m0["pubmesh_ws_write_batches_total"]; b > 0 {
		res.FramesPerBatch = (m1["pubmesh_ws_messages_out_total"] - m0["pubmesh_ws_messages_out_total"]) / b
	}
	if gw.exited() {
		return res, fmt.Errorf("bench: the gateway exited during the measurement: %s", gw.stderrTail())
	}
	return res, ctx.Err()
}

// fanoutClients are a fan-out row's WebSocket clients: client i is
// subscribed to channel i mod len(channels) and counts the frames it
// reads.
type fanoutClients struct {
	conns   []*websocket.Conn
	counts  []counter // per client
	lastNs  atomic.Int64
	wg      sync.WaitGroup
	closing atomic.Bool
}

func dialFanoutClients(ctx context.Context, wsURL string, channels []string, n int) (*fanoutClients, error) {
	fc := &fanoutClients{conns: make([]*websocket.Conn, n), counts: make([]counter, n)}
	d := websocket.Dialer{HandshakeTimeout: 10 * time.Second, ReadBufferSize: 1024, WriteBufferSize: 256}
	// Dial 32 at a time: fast, without a storm of SYNs the backlog drops.
	sem := make(chan struct{}, 32)
	errs := make(chan error, n)
	var wg sync.WaitGroup
	for i := range n {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			c, resp, err := d.DialContext(ctx, wsURL, nil)
			if err != nil {
				errs <- fmt.Errorf("bench: dial gateway: %w", err)
				return
			}
			resp.Body.Close()
			f := `{"op":"subscribe","channel":` + strconv.Quote(channels[i%len(channels)]) + `,"id":1}`
			if err := c.WriteMessage(websocket.TextMessage, []byte(f)); err != nil {
				c.Close()
				errs <- fmt.Errorf("bench: subscribe: %w", err)
				return
			}
			c.SetReadDeadline(time.Now().Add(30 * time.Second))
			if _, b, err := c.ReadMessage(); err != nil || !bytes.HasPrefix(b, []byte(`{"op":"ok"`)) {
				c.Close()
				errs <- fmt.Errorf("bench: subscribe: %q %v", b, err)
				return
			}
			c.SetReadDeadline(time.Time{})
			fc.conns[i] = c
		}()
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return fc, err
	}
	for i, c := range fc.conns {
		fc.wg.Add(1)
		go func() {
			defer fc.wg.Done()
			for {
				if _, _, err := c.NextReader(); err != nil {
					return
				}
				fc.counts[i].n.Add(1)
				fc.lastNs.Store(time.Now().UnixNano())
			}
		}()
	}
	return fc, nil
}

func (fc *fanoutClients) delivered() uint64 {
	var n uint64
	for i := range fc.counts {
		n += fc.counts[i].n.Load()
	}
	return n
}

func (fc *fanoutClients) lastDelivery() time.Time { return time.Unix(0, fc.lastNs.Load()) }

func (fc *fanoutClients) close() {
	for _, c := range fc.conns {
		if c != nil {
			c.Close()
		}
	}
	fc.wg.Wait()
}

// fanoutGatewayName is how a report names the gateway binary.
func fanoutGatewayName(binary string, baseline bool) string {
	if baseline {
		return binary
	}
	return "this build"
}

// vmRSS reads a process's VmRSS in bytes.
func vmRSS(pid int) (int64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, fmt.Errorf("bench: %w", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("bench: VmRSS %q: %w", v, err)
			}
			return kb << 10, nil
		}
	}
	return 0, fmt.Errorf("bench: no VmRSS for PID %d", pid)
}

// runFanout measures the selected fan-out rows: for each, pubmesh nodes in
// a cluster of their own, this build's gateway on them and, with
// CompareGateway, the other build's, one after the other.
func runFanout(ctx context.Context, e *env) []FanoutResult {
	cfg := e.cfg
	if cfg.GatewayBinary == "" {
		return nil // no gateway to run: the rows are left out
	}
	var out []FanoutResult
	for _, spec := range fanoutSpecs() {
		if !cfg.wantRow(spec.row) {
			continue
		}
		type run struct {
			binary   string
			baseline bool
		}
		runs := []run{{cfg.GatewayBinary, false}}
		if cfg.CompareGateway != "" {
			runs = append(runs, run{cfg.CompareGateway, true})
		}
		pt, setupErr := newPubmeshTarget(ctx, e.srv, e.etcd, cfg, cfg.Nodes, 1, "")
		for _, r := range runs {
			label := fmt.Sprintf("[%d] %s", spec.row, spec.key)
			if r.baseline {
				label += " (compared gateway)"
			}
			res, err := FanoutResult{}, setupErr
			if err == nil {
				res, err = measureFanout(ctx, e, pt, spec, r.binary)
			}
			res.Row, res.Key, res.Label, res.Clients, res.Channels = spec.row, spec.key, spec.label(), spec.clients, spec.channels
			res.Gateway, res.Baseline = fanoutGatewayName(r.binary, r.baseline), r.baseline
			if err != nil {
				res.Err = err.Error()
				fmt.Fprintf(cfg.Progress, "bench: %s: %v\n", label, err)
			} else {
				fmt.Fprintf(cfg.Progress, "bench: %-34s done: delivered %s frames/s, gateway CPU %.2f µs/frame, %.1f KiB/connection, %.1f frames/batch\n",
					label, si(res.DeliveredPerSec), res.GatewayCPUPerFrameUs, res.RSSPerConnKiB, res.FramesPerBatch)
			}
			out = append(out, res)
		}
		if pt != nil {
			pt.close()
		}
	}
	return out
}

// fanoutRatios are issue 14's gateway targets: CPU per delivered frame at
// most 0.7× the compared gateway's, at most 16 KiB per idle connection.
func (r *Report) fanoutRatios() []Ratio {
	var out []Ratio
	for _, x := range r.Fanout {
		if x.Baseline || x.Err != "" {
			continue
		}
		mem := Ratio{Name: fmt.Sprintf("row %d gateway RSS per connection", x.Row), Value: x.RSSPerConnKiB, Op: "<=", Limit: 16, Unit: " KiB"}
		mem.Met = compare(mem.Value, mem.Op, mem.Limit)
		out = append(out, mem)
		for _, b := range r.Fanout {
			if !b.Baseline || b.Row != x.Row {
				continue
			}
			q := Ratio{Name: fmt.Sprintf("row %d gateway CPU/frame ÷ %s's", x.Row, b.Gateway), Op: "<=", Limit: 0.7, Unit: "×"}
			switch {
			case b.Err != "":
				q.Missing = "the compared gateway failed: " + b.Err
			case b.GatewayCPUPerFrameUs == 0:
				q.Missing = "the compared gateway used no measurable CPU"
			default:
				q.Value = x.GatewayCPUPerFrameUs / b.GatewayCPUPerFrameUs
				q.Met = compare(q.Value, q.Op, q.Limit)
			}
			out = append(out, q)
		}
	}
	return out
}

// fanoutMarkdown writes the fan-out table, if any row was measured.
func (r *Report) fanoutMarkdown(w io.Writer) {
	if len(r.Fanout) == 0 {
		return
	}
	fmt.Fprintln(w, "### WebSocket fan-out (rows 12, 13)")
	fmt.Fprintln(w)
	fmt.Fprintf(w, "Each client subscribed to one channel (client i to channel i mod channels); %d goroutines post "+
		"%d-byte JSON payloads to `POST /api/publish/{channel}`, round-robin over the channels, pausing while more than "+
		"%d frames per client are undelivered; the gateway runs as a child process (`pubmesh gateway --insecure`), "+
		"its CPU read from /proc/PID/stat, its RSS per connection from VmRSS before and after the clients connected.\n\n",
		fanoutPublishers, fanoutPayload, fanoutBacklog)
	fmt.Fprintln(w, "| row | gateway | published/s | delivered frames/s | lost | gateway CPU µs/frame | RSS KiB/connection | frames/batch |")
	fmt.Fprintln(w, "|---|---|---:|---:|---:|---:|---:|---:|")
	for _, x := range r.Fanout {
		name := fmt.Sprintf("%d %s", x.Row, x.Label)
		if x.Err != "" {
			fmt.Fprintf(w, "| %s | %s | error: %s ||||||\n", name, x.Gateway, strings.ReplaceAll(x.Err, "|", "/"))
			continue
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %d | %.3f | %.1f | %.1f |\n", name, x.Gateway, si(x.PublishedPerSec),
			si(x.DeliveredPerSec), x.Lost, x.GatewayCPUPerFrameUs, x.RSSPerConnKiB, x.FramesPerBatch)
		if x.PublishErrors > 0 {
			fmt.Fprintf(w, "|  | %d publish errors, first: %s |||||||\n", x.PublishErrors, x.FirstError)
		}
	}
	fmt.Fprintln(w)
}
