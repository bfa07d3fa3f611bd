package bench_test

import (
	"context"
	"fmt"
	"strconv"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/pubmesh/pubmesh/discovery"
	"github.com/pubmesh/pubmesh/fanout"
	"github.com/pubmesh/pubmesh/internal/embedetcd"
	"github.com/pubmesh/pubmesh/internal/testredis"
)

// Go benchmarks of the fanout hot paths against plain go-redis, on real
// redis-servers, for `go test -bench . -benchmem ./bench/`. They measure
// the cost per message in this process (ns/op, B/op, allocs/op); the
// side-by-side tables come from `pubmesh bench`.

// cluster is n redis-servers registered ready in an embedded etcd.
type cluster struct {
	cli   *clientv3.Client
	name  string
	addrs []string
}

func newCluster(b *testing.B, n int) *cluster {
	b.Helper()
	srv, err := embedetcd.Start(embedetcd.Config{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(srv.Close)
	cli, err := discovery.Dial(context.Background(), discovery.EtcdConfig{Endpoints: []string{srv.Endpoint()}})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { cli.Close() })
	c := &cluster{cli: cli, name: "bench"}
	reg, err := discovery.New(cli, discovery.Config{Cluster: c.name})
	if err != nil {
		b.Fatal(err)
	}
	for i := range n {
		rs := testredis.New(b)
		g, err := reg.Register(context.Background(), discovery.Node{
			ID: fmt.Sprintf("n%d", i), Addr: rs.Addr, State: discovery.StateReady, StartedAt: time.Now(),
			Version: "bench", RunID: strconv.Itoa(rs.PID()),
		}, discovery.RegisterOptions{})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { g.Close(context.Background()) })
		c.addrs = append(c.addrs, rs.Addr)
	}
	return c
}

func (c *cluster) client(b *testing.B, cfg fanout.Config) *fanout.Client {
	b.Helper()
	cfg.EtcdClient, cfg.Cluster = c.cli, c.name
	fc, err := fanout.New(context.Background(), cfg)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { fc.Close() })
	return fc
}

var channels = func() []string {
	var out []string
	for i := range 64 {
		out = append(out, fmt.Sprintf("bench.ch%03d", i))
	}
	return out
}()

// BenchmarkPublish is one Publish call per message from 64 goroutines per
// CPU, without subscribers: the publish path (envelope, rendezvous pick,
// queue, coalesced pipeline) against go-redis's PUBLISH per call and by
// hand-made pipelines of 128.
func BenchmarkPublish(b *testing.B) {
	payload := make([]byte, 128)
	for _, nodes := range []int{1, 3} {
		b.Run(fmt.Sprintf("fanout-%dnodes", nodes), func(b *testing.B) {
			c := newCluster(b, nodes)
			fc := c.client(b, fanout.Config{})
			b.ReportAllocs()
			b.SetParallelism(64)
			var i atomic.Uint64
			b.ResetTimer()
			defer cpuPerOp(b)()
			b.RunParallel(func(pb *testing.PB) {
				ctx := context.Background()
				for pb.Next() {
					if err := fc.Publish(ctx, channels[i.Add(1)%64], payload); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
	b.Run("go-redis-per-call", func(b *testing.B) {
		rs := testredis.New(b)
		rdb := redis.NewClient(&redis.Options{Addr: rs.Addr, DisableIdentity: true})
		defer rdb.Close()
		b.ReportAllocs()
		b.SetParallelism(64)
		var i atomic.Uint64
		b.ResetTimer()
		defer cpuPerOp(b)()
		b.RunParallel(func(pb *testing.PB) {
			ctx := context.Background()
			for pb.Next() {
				if err := rdb.Publish(ctx, channels[i.Add(1)%64], payload).Err(); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
	b.Run("go-redis-pipelined", func(b *testing.B) {
		rs := testredis.New(b)
		rdb := redis.NewClient(&redis.Options{Addr: rs.Addr, DisableIdentity: true})
		defer rdb.Close()
		b.ReportAllocs()
		ctx := context.Background()
		b.ResetTimer()
		defer cpuPerOp(b)()
		for n := 0; n < b.N; {
			pipe := rdb.Pipeline()
			for k := 0; k < 128 && n < b.N; k++ {
				pipe.Publish(ctx, channels[n%64], payload)
				n++
			}
			if _, err := pipe.Exec(ctx); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// publishParallel publishes b.N messages from 64 goroutines, round-robin
// over the 64 channels, and returns once got (the subscriber's count) has
// them all; ns/op, allocs/op and cpu-ns/op are per delivered message.
func publishParallel(b *testing.B, pub *fanout.Client, payload []byte, got *atomic.Int64) {
	b.ReportAllocs()
	b.SetParallelism(64)
	var i atomic.Uint64
	b.ResetTimer()
	stopCPU := cpuPerOp(b)
	b.RunParallel(func(pb *testing.PB) {
		ctx := context.Background()
		for pb.Next() {
			if err := pub.Publish(ctx, channels[i.Add(1)%64], payload); err != nil {
				b.Error(err)
				return
			}
		}
	})
	waitFor(b, got, int64(b.N))
	stopCPU()
}

// deliverAll subscribes subc to the 64 channels, publishes b.N messages
// with publishParallel and returns once subc has them all (then closes it).
func deliverAll(b *testing.B, pub, subc *fanout.Client, payload []byte) {
	sub, err := subc.Subscribe(context.Background(), channels...)
	if err != nil {
		b.Fatal(err)
	}
	var got atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range sub.Messages() {
			got.Add(1)
		}
	}()
	publishParallel(b, pub, payload, &got)
	b.StopTimer()
	subc.Close()
	<-done
}

// BenchmarkDeliver is the whole path of one message to one subscriber:
// publish (many goroutines), Redis, receive, decode, dedup and order,
// hand-off to the Subscription. ns/op and allocs/op are per delivered
// message, both sides in this process.
func BenchmarkDeliver(b *testing.B) {
	payload := make([]byte, 128)
	b.Run("fanout-3nodes", func(b *testing.B) {
		c := newCluster(b, 3)
		pub := c.client(b, fanout.Config{})
		subc := c.client(b, fanout.Config{Overflow: fanout.Block})
		deliverAll(b, pub, subc, payload)
	})
	b.Run("go-redis-pipelined", func(b *testing.B) {
		rs := testredis.New(b)
		rdb := redis.NewClient(&redis.Options{Addr: rs.Addr, DisableIdentity: true})
		defer rdb.Close()
		ctx := context.Background()
		ps := rdb.Subscribe(ctx, channels...)
		for range channels {
			if _, err := ps.Receive(ctx); err != nil {
				b.Fatal(err)
			}
		}
		var got atomic.Int64
		done := make(chan struct{})
		go func() {
			defer close(done)
			for {
				msg, err := ps.Receive(context.Background())
				if err != nil {
					return
				}
				if _, ok := msg.(*redis.Message); ok {
					got.Add(1)
				}
			}
		}()
		b.ReportAllocs()
		b.ResetTimer()
		stopCPU := cpuPerOp(b)
		for n := 0; n < b.N; {
			pipe := rdb.Pipeline()
			for k := 0; k < 128 && n < b.N; k++ {
				pipe.Publish(ctx, channels[n%64], payload)
				n++
			}
			if _, err := pipe.Exec(ctx); err != nil {
				b.Fatal(err)
			}
		}
		waitFor(b, &got, int64(b.N))
		stopCPU()
		b.StopTimer()
		ps.Close()
		<-done
	})
}

// cpuPerOp reports this process's CPU time per op as "cpu-ns/op", which a
// busy shared machine disturbs less than wall time (ns/op). Call the
// returned func where the timer stops.
func cpuPerOp(b *testing.B) func() {
	start := processCPU()
	return func() { b.ReportMetric(float64(processCPU()-start)/float64(b.N), "cpu-ns/op") }
}

func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func waitFor(b *testing.B, got *atomic.Int64, n int64) {
	deadline := time.Now().Add(30 * time.Second)
	for got.Load() < n {
		if time.Now().After(deadline) {
			b.Fatalf("delivered %d of %d", got.Load(), n)
		}
		time.Sleep(100 * time.Microsecond)
	}
}
