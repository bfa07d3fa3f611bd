package bench

import (
	"context"

	"github.com/redis/go-redis/v9"

	"github.com/pubmesh/pubmesh/internal/testredis"
)

// redisTarget is plain go-redis on one redis-server: rows 1 (hand-made
// pipelines) and 2 (one PUBLISH call per message from many goroutines).
// Each subscriber is its own connection subscribed to every channel.
type redisTarget struct {
	srv       *servers
	rs        *testredis.Server
	rdb       *redis.Client
	pipelined bool
	workers   int
	batch     int
}

func newRedisTarget(srv *servers, cfg Config, pipelined bool) (*redisTarget, error) {
	rs, err := srv.start()
	if err != nil {
		return nil, err
	}
	t := &redisTarget{srv: srv, rs: rs, pipelined: pipelined, workers: cfg.Publishers, batch: 1}
	if pipelined {
		t.workers, t.batch = cfg.PipelineWorkers, cfg.Batch
	}
	// go-redis's default pool (10 per CPU) is what a naive app gets; the
	// pipelining workers need one connection each.
	t.rdb = redis.NewClient(&redis.Options{Addr: rs.Addr, DisableIdentity: true})
	return t, nil
}

func (t *redisTarget) redisAddrs() []string { return []string{t.rs.Addr} }

func (t *redisTarget) shape() (int, int) { return t.workers, t.batch }

func (t *redisTarget) subscribe(ctx context.Context, channels []string, sk *sink) (func(), error) {
	ps := t.rdb.Subscribe(ctx)
	return readPubSub(ctx, ps, len(channels), func() error { return ps.Subscribe(ctx, channels...) }, sk)
}

func (t *redisTarget) publish(ctx context.Context, msgs []message) (int, error) {
	if !t.pipelined {
		n := 0
		for _, m := range msgs {
			if err := t.rdb.Publish(ctx, m.channel, m.payload).Err(); err != nil {
				return n, err
			}
			n++
		}
		return n, nil
	}
	return execPipeline(ctx, t.rdb.Pipeline(), msgs, false)
}

// execPipeline sends msgs as PUBLISH (or SPUBLISH) commands in one
// pipeline and counts those that succeeded.
func execPipeline(ctx context.Context, pipe redis.Pipeliner, msgs []message, sharded bool) (int, error) {
	cmds := make([]*redis.IntCmd, len(msgs))
	for i, m := range msgs {
		if sharded {
			cmds[i] = pipe.SPublish(ctx, m.channel, m.payload)
		} else {
			cmds[i] = pipe.Publish(ctx, m.channel, m.payload)
		}
	}
	_, err := pipe.Exec(ctx)
	n := 0
	for _, c := range cmds {
		if c.Err() == nil {
			n++
		}
	}
	return n, err
}

func (t *redisTarget) close() {
	t.rdb.Close()
	t.srv.stop(t.rs)
}
