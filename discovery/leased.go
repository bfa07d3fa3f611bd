package discovery

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// leasedValue is a JSON value under a lease of its own, the shape of the
// clients/<id> and gateways/<id> registrations: created only if no live
// holder has the key, rewritten only while the key still belongs to the
// lease, gone when the lease ends.
type leasedValue[T any] struct {
	*Lease
	cli  *clientv3.Client
	key  string
	what string     // "client x", for errors
	mu   sync.Mutex // guards v
	v    T
}

// createLeased writes v at key under a new lease of ttl, unless a live
// holder has the key: then it fails wrapping taken and leaves that key
// alone.
func createLeased[T any](ctx context.Context, cli *clientv3.Client, log *slog.Logger, key, what string, v T, ttl time.Duration, taken error) (*leasedValue[T], error) {
	lease, err := grantLease(ctx, cli, ttl, log)
	if err != nil {
		return nil, fmt.Errorf("discovery: register %s: %w", what, err)
	}
	val, _ := json.Marshal(v)
	txn, err := cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, string(val), clientv3.WithLease(lease.ID()))).
		Commit()
	if err == nil && !txn.Succeeded {
		err = taken
	}
	if err != nil {
		lease.Close(ctx)
		return nil, fmt.Errorf("discovery: register %s: %w", what, err)
	}
	return &leasedValue[T]{Lease: lease, cli: cli, key: key, what: what, v: v}, nil
}

// update changes the value with fn and rewrites it under the same lease,
// only while the key still belongs to it (ErrLeaseLost otherwise); fix
// runs after fn, to keep what fn must not change (the id).
func (l *leasedValue[T]) update(ctx context.Context, fn func(*T), fix func(*T)) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	v := l.v
	fn(&v)
	fix(&v)
	val, _ := json.Marshal(v)
	txn, err := l.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.LeaseValue(l.key), "=", l.ID())).
		Then(clientv3.OpPut(l.key, string(val), clientv3.WithLease(l.ID()))).
		Commit()
	if err != nil {
		return fmt.Errorf("discovery: update %s: %w", l.what, err)
	}
	if !txn.Succeeded {
		return fmt.Errorf("discovery: update %s: %w", l.what, ErrLeaseLost)
	}
	l.v = v
	return nil
}

// value returns the value as last written.
func (l *leasedValue[T]) value() T {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.v
}
