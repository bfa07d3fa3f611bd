package bench

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// message is one publish: the payload buffer belongs to the publishing
// goroutine and is reused once publish returns.
type message struct {
	channel string
	payload []byte
}

// target is one way of moving messages (a row of a table). The runner
// subscribes, then publishes from several goroutines at once; publish and
// subscribe are safe for concurrent use.
type target interface {
	// redisAddrs are the servers whose INFO cpu is the row's Redis CPU.
	redisAddrs() []string
	// shape is how the runner calls publish: from workers goroutines, with
	// at most batch messages per call.
	shape() (workers, batch int)
	// subscribe starts one subscriber that receives every message of
	// channels and records each in a recorder of sk. It returns once the
	// subscription is in place everywhere; stop ends it and waits for its
	// goroutines.
	subscribe(ctx context.Context, channels []string, sk *sink) (stop func(), err error)
	// publish sends msgs and returns how many were accepted.
	publish(ctx context.Context, msgs []message) (int, error)
	// close stops the target's clients and servers.
	close()
}

// readPubSub subscribes ps with sub (SUBSCRIBE or SSUBSCRIBE commands),
// waits for the n confirmations, then reads messages into a recorder until
// ps is closed. It returns a stop func that closes ps and waits.
func readPubSub(ctx context.Context, ps *redis.PubSub, n int, sub func() error, sk *sink) (func(), error) {
	if err := sub(); err != nil {
		ps.Close()
		return nil, err
	}
	for got := 0; got < n; {
		msg, err := ps.Receive(ctx)
		if err != nil {
			ps.Close()
			return nil, err
		}
		if _, ok := msg.(*redis.Subscription); ok {
			got++
		}
	}
	rec := sk.recorder()
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			msg, err := ps.Receive(context.Background())
			if err != nil {
				if errors.Is(err, redis.ErrClosed) {
					return
				}
				time.Sleep(10 * time.Millisecond) // go-redis reconnects and resubscribes
				continue
			}
			if m, ok := msg.(*redis.Message); ok {
				if ts, ok := stampOf(m.Payload); ok {
					rec.record(ts)
				}
			}
		}
	}()
	var once sync.Once
	return func() {
		once.Do(func() {
			ps.Close()
			<-done
		})
	}, nil
}

// stopAll calls every stop func.
func stopAll(stops []func()) {
	for _, s := range stops {
		s()
	}
}
