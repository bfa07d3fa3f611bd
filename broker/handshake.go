package broker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/pubmesh/pubmesh/discovery"
	"github.com/pubmesh/pubmesh/internal/respguard"
)

// Membership changes are handshakes with the fanout clients registered in
// etcd, not sleeps:
//
//   - join: the node stays joining until every registered client has acked
//     that its subscriptions are confirmed there (discovery.AckSubscribed for
//     this run of the node). Only then can a publish reach it, so no
//     subscriber misses a message published to it.
//   - drain: the node stays draining until every client has acked that it
//     no longer publishes there (discovery.AckReleased), and then until Redis
//     has written its pub/sub output buffers out to the subscribers (obl,
//     oll and omem all 0 in CLIENT LIST). Only then does the key go.
//
// The gates' timeouts are fallbacks for clients that do not answer; they are
// logged with the clients' ids.

// JoinHandshake returns a JoinGate that waits for every registered client's
// subscribed ack, up to timeout. After the timeout it logs the clients that
// did not answer and lets the node turn ready.
func JoinHandshake(reg *discovery.Registry, timeout time.Duration, log *slog.Logger) func(context.Context, discovery.Node) error {
	return func(ctx context.Context, n discovery.Node) error {
		wctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		start := time.Now()
		pending, err := reg.WaitAcks(wctx, n, discovery.AckSubscribed)
		if err == nil {
			log.Info("join handshake complete", "node", n.ID, "took", time.Since(start).Round(time.Millisecond))
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		log.Warn("join handshake timed out; turning ready without these clients' acks",
			"node", n.ID, "timeout", timeout, "clients", strings.Join(pending, ","))
		return nil
	}
}

// DrainHandshake returns a DrainGate that waits for every registered
// client's released ack, then for the node's pub/sub output buffers to be
// empty. The agent bounds it with DrainTimeout; what is still pending then
// is logged.
func DrainHandshake(reg *discovery.Registry, redisOpts func(addr string) *redis.Options, log *slog.Logger) func(context.Context, discovery.Node) error {
	return func(ctx context.Context, n discovery.Node) error {
		start := time.Now()
		pending, err := reg.WaitAcks(ctx, n, discovery.AckReleased)
		if err != nil {
			log.Warn("drain handshake timed out; leaving without these clients' acks",
				"node", n.ID, "clients", strings.Join(pending, ","))
			return fmt.Errorf("broker: drain %s: clients %v did not release: %w", n.ID, pending, err)
		}
		opts := redisOpts(n.Addr)
		// CLIENT LIST's reply is checked before go-redis reads it (see
		// internal/respguard): the node may be an attached server that is
		// not what it claims.
		if opts.Dialer == nil {
			opts.Dialer = redis.NewDialer(opts)
		}
		opts.Dialer = respguard.Dialer(opts.Dialer, nil)
		rdb := redis.NewClient(opts)
		defer rdb.Close()
		if err := waitFlushed(ctx, rdb); err != nil {
			log.Warn("drain: pub/sub output buffers not flushed in time", "node", n.ID, "err", err)
			return err
		}
		log.Info("drain handshake complete", "node", n.ID, "took", time.Since(start).Round(time.Millisecond))
		return nil
	}
}

// waitFlushed polls CLIENT LIST TYPE pubsub until no subscriber connection
// has pending output: obl=0, oll=0 and omem=0. omem alone is not enough:
// Redis keeps up to 16 KiB per client in its reply buffer (obl) before it
// uses the reply list that omem measures, so a subscriber with a full socket
// can show omem=0 with the tail of the stream still unsent.
func waitFlushed(ctx context.Context, rdb *redis.Client) error {
	for {
		pending, err := pubsubPending(ctx, rdb)
		if err == nil && pending.empty() {
			return nil
		}
		select {
		case <-ctx.Done():
			if err != nil {
				return fmt.Errorf("broker: client list: %w", err)
			}
			return fmt.Errorf("broker: %s still queued to subscribers: %w", pending, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// pendingOutput sums what Redis has not yet written to its pub/sub clients.
type pendingOutput struct {
	clients int   // clients with any pending output
	obl     int64 // bytes in the clients' reply buffers
	oll     int64 // entries in their reply lists
	omem    int64 // bytes in their reply lists
}

func (p pendingOutput) empty() bool { return p.obl == 0 && p.oll == 0 && p.omem == 0 }

func (p pendingOutput) String() string {
	return fmt.Sprintf("%d bytes (obl=%d omem=%d oll=%d, %d clients)", p.obl+p.omem, p.obl, p.omem, p.oll, p.clients)
}

// pubsubPending sums obl, oll and omem over the pub/sub clients of a Redis.
// A line without all three fields is an error: a server that does not
// report them cannot prove it has flushed.
func pubsubPending(ctx context.Context, rdb *redis.Client) (pendingOutput, error) {
	list, err := rdb.Do(ctx, "CLIENT", "LIST", "TYPE", "pubsub").Text()
	if err != nil {
		return pendingOutput{}, err
	}
	var total pendingOutput
	for _, line := range strings.Split(list, "\n") {
		if strings.TrimSpace(line) == "" {
			continue
		}
		var c pendingOutput
		seen := 0
		for _, f := range strings.Fields(line) {
			k, v, _ := strings.Cut(f, "=")
			var dst *int64
			switch k {
			case "obl":
				dst = &c.obl
			case "oll":
				dst = &c.oll
			case "omem":
				dst = &c.omem
			default:
				continue
			}
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil || n < 0 {
				return pendingOutput{}, errors.New("broker: unexpected CLIENT LIST output")
			}
			*dst = n
			seen++
		}
		if seen != 3 {
			return pendingOutput{}, errors.New("broker: CLIENT LIST output without obl, oll and omem")
		}
		if !c.empty() {
			total.clients++
		}
		total.obl += c.obl
		total.oll += c.oll
		total.omem += c.omem
	}
	return total, nil
}
