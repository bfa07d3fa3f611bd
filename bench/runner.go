package bench

import (
	"context"
	"fmt"
	"math"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// counter is a per-goroutine count on its own cache line.
type counter struct {
	n atomic.Uint64
	_ [56]byte
}

// runner measures targets with one Config. One measurement at a time.
type runner struct {
	cfg      Config
	channels []string
}

func newRunner(cfg Config) *runner {
	r := &runner{cfg: cfg}
	for i := range cfg.Channels {
		r.channels = append(r.channels, fmt.Sprintf("bench.ch%03d", i))
	}
	return r
}

// dropper is a target that counts messages its subscribers dropped.
type dropper interface{ dropped() uint64 }

// measure subscribes cfg.Subscribers times, publishes for cfg.Duration at
// rate (0: max), waits for the deliveries to stop and returns the figures.
// label names the measurement in progress lines.
func (r *runner) measure(ctx context.Context, label string, t target, rate float64) (Result, error) {
	cfg := r.cfg
	res := Result{OfferedRate: rate, Subscribers: cfg.Subscribers, Channels: cfg.Channels, PayloadSize: cfg.PayloadSize}
	sk := &sink{}
	var stops []func()
	defer func() { stopAll(stops) }()
	for range cfg.Subscribers {
		stop, err := t.subscribe(ctx, r.channels, sk)
		if err != nil {
			return res, fmt.Errorf("subscribe: %w", err)
		}
		stops = append(stops, stop)
	}
	workers, batch := t.shape()
	res.Workers, res.Batch = workers, batch

	redis0, err := redisCPU(ctx, t.redisAddrs())
	if err != nil {
		return res, err
	}
	cpu0 := processCPU()
	start := time.Now()
	deadline := start.Add(cfg.Duration)
	counts := make([]counter, workers)
	published := func() uint64 {
		var n uint64
		for i := range counts {
			n += counts[i].n.Load()
		}
		return n
	}
	var (
		paused   atomic.Bool
		failed   atomic.Uint64
		errMu    sync.Mutex
		firstErr error
		wg       sync.WaitGroup
	)
	// At a fixed rate one pacer hands out a token per message (open loop:
	// the schedule does not wait for slow publishes); at max rate the
	// workers go as fast as publish returns.
	var tokens chan struct{}
	if rate > 0 {
		tokens = make(chan struct{}, workers*batch)
		wg.Add(1)
		go func() {
			defer wg.Done()
			pace(ctx, tokens, rate, start, deadline)
		}()
	}
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.worker(ctx, t, w, batch, tokens, deadline, &counts[w], &paused, func(n int, err error) {
				failed.Add(uint64(n))
				errMu.Lock()
				if firstErr == nil {
					firstErr = err
				}
				errMu.Unlock()
			})
		}()
	}
	pubDone := make(chan struct{})
	go func() { wg.Wait(); close(pubDone) }()

	// Control loop: pause publishers past MaxBacklog, print progress each
	// second, and after publishing wait until deliveries stop.
	subs := uint64(cfg.Subscribers)
	maxBacklog := uint64(cfg.MaxBacklog)
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	var (
		pubEnd             time.Time
		lastN              uint64
		lastChange         time.Time
		lastPrint          = start
		lastPub, lastDeliv uint64
	)
	for {
		<-tick.C
		now := time.Now()
		pub, deliv := published(), sk.delivered()
		backlog := int64(pub) - int64(deliv/subs)
		paused.Store(backlog > int64(maxBacklog))
		if now.Sub(lastPrint) >= time.Second {
			el := now.Sub(lastPrint).Seconds()
			phase := "publishing"
			if !pubEnd.IsZero() {
				phase = "draining"
			}
			fmt.Fprintf(cfg.Progress, "bench: %-34s %3.0fs %-10s published %9s/s  delivered %9s/s  backlog %d/subscriber\n",
				label, now.Sub(start).Seconds(), phase, si(float64(pub-lastPub)/el), si(float64(deliv-lastDeliv)/el), max(backlog, 0))
			lastPrint, lastPub, lastDeliv = now, pub, deliv
		}
		if pubEnd.IsZero() {
			select {
			case <-pubDone:
				pubEnd = time.Now()
				pub = published()
				lastN, lastChange = sk.delivered(), pubEnd
			default:
				continue
			}
		}
		if deliv >= pub*subs {
			break
		}
		if deliv != lastN {
			lastN, lastChange = deliv, now
		}
		if now.Sub(lastChange) >= cfg.Settle || now.Sub(pubEnd) >= cfg.DrainTimeout || ctx.Err() != nil {
			break
		}
	}
	cpu1 := processCPU()
	redis1, err := redisCPU(context.WithoutCancel(ctx), t.redisAddrs())
	if err != nil {
		return res, err
	}
	stopAll(stops)
	stops = nil

	pub := published()
	res.Published = pub
	res.Expected = pub * subs
	res.Delivered = sk.delivered()
	res.Lost = int64(res.Expected) - int64(res.Delivered)
	res.PublishErrors = failed.Load()
	if firstErr != nil {
		res.FirstError = firstErr.Error()
	}
	if d, ok := t.(dropper); ok {
		res.Dropped = d.dropped()
	}
	res.Seconds = pubEnd.Sub(start).Seconds()
	res.PublishedPerSec = float64(pub) / res.Seconds
	if last := sk.lastDelivery(); last > start.UnixNano() {
		res.DeliveredPerSec = float64(res.Delivered) / time.Duration(last-start.UnixNano()).Seconds()
	}
	h := sk.histogram()
	res.P50us = us(h.quantile(0.50))
	res.P99us = us(h.quantile(0.99))
	res.P999us = us(h.quantile(0.999))
	res.LoadAvg = loadAvg()
	res.RedisCPUSeconds = (redis1 - redis0).Seconds()
	res.ClientCPUSeconds = (cpu1 - cpu0).Seconds()
	if res.Delivered > 0 {
		res.RedisCPUPerMsgUs = res.RedisCPUSeconds * 1e6 / float64(res.Delivered)
		res.ClientCPUPerMsgUs = res.ClientCPUSeconds * 1e6 / float64(res.Delivered)
	}
	return res, ctx.Err()
}

// pace sends one token per message due at rate since start, every
// 200µs, until the deadline, then closes tokens. When the workers lag the
// channel fills and pace waits: the offered rate is not reached, which
// published/s shows.
func pace(ctx context.Context, tokens chan<- struct{}, rate float64, start, deadline time.Time) {
	defer close(tokens)
	var issued int64
	for {
		now := time.Now()
		if !now.Before(deadline) || ctx.Err() != nil {
			return
		}
		due := int64(math.Floor(now.Sub(start).Seconds()*rate)) + 1
		for ; issued < due; issued++ {
			select {
			case tokens <- struct{}{}:
			case <-ctx.Done():
				return
			}
		}
		time.Sleep(200 * time.Microsecond)
	}
}

// worker publishes until the deadline, batches of up to batch messages:
// with tokens (fixed rate) one message per token, as many as are waiting;
// without, full batches, paused while the backlog is too long.
func (r *runner) worker(ctx context.Context, t target, w, batch int, tokens <-chan struct{}, deadline time.Time,
	count *counter, paused *atomic.Bool, fail func(int, error)) {
	msgs := make([]message, batch)
	for i := range msgs {
		msgs[i].payload = make([]byte, r.cfg.PayloadSize)
		fillPayload(msgs[i].payload, 0, true)
	}
	k := w
	for ctx.Err() == nil {
		n := batch
		if tokens != nil {
			if _, ok := <-tokens; !ok {
				return
			}
			n = 1
		fill:
			for n < batch {
				select {
				case _, ok := <-tokens:
					if !ok {
						break fill
					}
					n++
				default:
					break fill
				}
			}
		} else if !time.Now().Before(deadline) {
			return
		}
		for paused.Load() && ctx.Err() == nil {
			time.Sleep(100 * time.Microsecond)
		}
		ns := time.Now().UnixNano()
		for i := range n {
			msgs[i].channel = r.channels[k%len(r.channels)]
			k++
			fillPayload(msgs[i].payload, ns, false)
		}
		ok, err := t.publish(ctx, msgs[:n])
		count.n.Add(uint64(ok))
		if err != nil {
			fail(n-ok, err)
			if ctx.Err() == nil {
				time.Sleep(10 * time.Millisecond)
			}
		}
	}
}

func us(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

// si formats a rate with a k/M suffix.
func si(v float64) string {
	switch {
	case v >= 1e6:
		return fmt.Sprintf("%.2fM", v/1e6)
	case v >= 1e3:
		return fmt.Sprintf("%.1fk", v/1e3)
	default:
		return strings.TrimSpace(fmt.Sprintf("%.0f", v))
	}
}
