package discovery

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// ErrLeaseLost is the cause given by Lease.Err when etcd says the lease no
// longer exists.
var ErrLeaseLost = errors.New("discovery: lease lost")

// Lease is an etcd lease kept alive until Close. It is safe for concurrent
// use.
//
// The etcd client gives up a keep-alive after one TTL without an answer, for
// example while etcd restarts, although the lease itself may well survive
// (etcd refreshes every lease when a new leader takes over). Lease therefore
// asks etcd, once it answers again, whether the lease still exists, and
// resumes keeping it alive if so: an etcd outage does not make a node
// disappear. Done fires only when etcd confirms the lease is gone, or on
// Close.
type Lease struct {
	cli    *clientv3.Client
	id     clientv3.LeaseID
	ttl    time.Duration
	log    *slog.Logger
	cancel context.CancelFunc // stops keep-alive

	mu  sync.Mutex // guards err
	err error

	// confirmed is when etcd last said the lease was alive (unix ns): the
	// grant, each keep-alive answer, a TimeToLive after an outage.
	confirmed atomic.Int64

	done      chan struct{} // closed by run when the lease is lost or closed
	closeOnce sync.Once
}

func grantLease(ctx context.Context, cli *clientv3.Client, ttl time.Duration, log *slog.Logger) (*Lease, error) {
	if ttl == 0 {
		ttl = 5 * time.Second
	}
	secs := max(int64(ttl/time.Second), 1)
	resp, err := cli.Grant(ctx, secs)
	if err != nil {
		return nil, fmt.Errorf("discovery: grant lease: %w", err)
	}
	kctx, cancel := context.WithCancel(context.Background())
	l := &Lease{cli: cli, id: resp.ID, ttl: ttl, log: log, cancel: cancel, done: make(chan struct{})}
	l.confirmed.Store(time.Now().UnixNano())
	go l.run(kctx)
	return l, nil
}

// run is the root of the lease's goroutine: it keeps the lease alive and
// decides when it is lost.
func (l *Lease) run(ctx context.Context) {
	defer close(l.done)
	for ctx.Err() == nil {
		ka, err := l.cli.KeepAlive(ctx, l.id)
		if err == nil {
			for range ka {
				l.confirmed.Store(time.Now().UnixNano())
			}
		}
		if ctx.Err() != nil {
			return
		}
		// The keep-alive stopped: find out whether the lease is really gone.
		for ctx.Err() == nil {
			if l.cli.Ctx().Err() != nil {
				l.setErr(fmt.Errorf("discovery: etcd client closed: %w", ErrLeaseLost))
				return
			}
			tctx, cancel := context.WithTimeout(ctx, time.Second)
			ttl, err := l.cli.TimeToLive(tctx, l.id)
			cancel()
			if err == nil && ttl.TTL > 0 {
				l.confirmed.Store(time.Now().UnixNano())
				l.log.Info("discovery: lease survived an etcd outage, resuming keep-alive", "lease", fmt.Sprintf("%x", l.id))
				break
			}
			if err == nil {
				l.setErr(ErrLeaseLost)
				return
			}
			sleep(ctx, 250*time.Millisecond)
		}
	}
}

func (l *Lease) setErr(err error) {
	l.mu.Lock()
	if l.err == nil {
		l.err = err
	}
	l.mu.Unlock()
}

// Confirmed is when etcd last said the lease was alive. The lease cannot
// have expired before Confirmed plus its TTL, so whatever depends on it
// (a join handshake waiting for this lease's ack) held until then at least.
func (l *Lease) Confirmed() time.Time { return time.Unix(0, l.confirmed.Load()) }

// ID of the lease.
func (l *Lease) ID() clientv3.LeaseID { return l.id }

// Done is closed when etcd confirms the lease is gone, or after Close.
func (l *Lease) Done() <-chan struct{} { return l.done }

// Err says why Done closed: ErrLeaseLost, or ErrClosedLease after Close.
func (l *Lease) Err() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.err
}

// ErrClosedLease is Lease.Err after Close.
var ErrClosedLease = errors.New("discovery: lease closed")

// Close revokes the lease, which deletes every key attached to it at once.
// If etcd does not answer within the TTL the lease expires by itself anyway,
// so Close never waits longer than that. Safe to call more than once.
func (l *Lease) Close(ctx context.Context) error {
	var err error
	l.closeOnce.Do(func() {
		l.setErr(ErrClosedLease)
		l.cancel()
		<-l.done
		rctx, cancel := context.WithTimeout(ctx, l.ttl)
		defer cancel()
		if _, rerr := l.cli.Revoke(rctx, l.id); rerr != nil {
			err = fmt.Errorf("discovery: revoke lease: %w", rerr)
		}
	})
	return err
}
