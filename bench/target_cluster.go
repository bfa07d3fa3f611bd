package bench

import (
	"context"
	"fmt"

	"github.com/redis/go-redis/v9"

	"github.com/pubmesh/pubmesh/internal/testredis"
)

// clusterTarget is a Redis Cluster of independent masters (no replicas),
// made with redis-cli --cluster create: row 3 (classic PUBLISH, which every
// master forwards to every other over the cluster bus) and row 4 (SPUBLISH
// and SSUBSCRIBE, which stay on the channel's shard). Publishes are
// hand-made pipelines through a go-redis ClusterClient, the peer's best
// case.
//
// With PUBLISH, subscriber i connects to master i mod n and subscribes to
// every channel there. With SSUBSCRIBE, each subscriber has one connection
// per master, subscribed to the channels whose slot that master owns.
type clusterTarget struct {
	srv     *servers
	nodes   []*testredis.Server
	cc      *redis.ClusterClient
	sharded bool
	workers int
	batch   int
	nextSub int
}

func newClusterTarget(ctx context.Context, srv *servers, cfg Config, masters int, sharded bool) (*clusterTarget, error) {
	nodes, err := srv.startCluster(ctx, masters)
	if err != nil {
		return nil, err
	}
	t := &clusterTarget{srv: srv, nodes: nodes, sharded: sharded, workers: cfg.PipelineWorkers, batch: cfg.Batch}
	addrs := t.redisAddrs()
	t.cc = redis.NewClusterClient(&redis.ClusterOptions{Addrs: addrs, DisableIdentity: true})
	if err := t.cc.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error { return c.Ping(ctx).Err() }); err != nil {
		t.close()
		return nil, fmt.Errorf("bench: cluster client: %w", err)
	}
	return t, nil
}

func (t *clusterTarget) redisAddrs() []string {
	out := make([]string, len(t.nodes))
	for i, n := range t.nodes {
		out[i] = n.Addr
	}
	return out
}

func (t *clusterTarget) shape() (int, int) { return t.workers, t.batch }

func (t *clusterTarget) subscribe(ctx context.Context, channels []string, sk *sink) (func(), error) {
	if !t.sharded {
		addr := t.nodes[t.nextSub%len(t.nodes)].Addr
		t.nextSub++
		rdb := redis.NewClient(&redis.Options{Addr: addr, DisableIdentity: true})
		ps := rdb.Subscribe(ctx)
		stop, err := readPubSub(ctx, ps, len(channels), func() error { return ps.Subscribe(ctx, channels...) }, sk)
		if err != nil {
			rdb.Close()
			return nil, err
		}
		return func() { stop(); rdb.Close() }, nil
	}
	// Group the channels by the master that owns their slot: SSUBSCRIBE
	// takes channels of one slot, on the node that owns it.
	byAddr := map[string][]string{}
	for _, ch := range channels {
		c, err := t.cc.MasterForKey(ctx, ch)
		if err != nil {
			return nil, fmt.Errorf("bench: slot owner of %s: %w", ch, err)
		}
		a := c.Options().Addr
		byAddr[a] = append(byAddr[a], ch)
	}
	var stops []func()
	for addr, chans := range byAddr {
		rdb := redis.NewClient(&redis.Options{Addr: addr, DisableIdentity: true})
		ps := rdb.Subscribe(ctx)
		stop, err := readPubSub(ctx, ps, len(chans), func() error {
			for _, ch := range chans {
				if err := ps.SSubscribe(ctx, ch); err != nil {
					return err
				}
			}
			return nil
		}, sk)
		if err != nil {
			rdb.Close()
			stopAll(stops)
			return nil, err
		}
		stops = append(stops, func() { stop(); rdb.Close() })
	}
	return func() { stopAll(stops) }, nil
}

func (t *clusterTarget) publish(ctx context.Context, msgs []message) (int, error) {
	return execPipeline(ctx, t.cc.Pipeline(), msgs, t.sharded)
}

func (t *clusterTarget) close() {
	t.cc.Close()
	for _, n := range t.nodes {
		t.srv.stop(n)
	}
}
