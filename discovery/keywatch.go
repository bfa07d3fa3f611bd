package discovery

import (
	"context"
	"errors"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// ErrKeyDeleted is Registration.Err when the node's key was deleted, or
// written under another lease, while the registration's lease still lived:
// someone ran `etcdctl del` (or put) on it. The registration is over and its
// lease is no longer kept alive; the owner registers again.
var ErrKeyDeleted = errors.New("discovery: node key deleted while its lease lived")

// watchKey is the registration's goroutine: it watches the node's key from
// the revision that created it, and ends the registration when the lease is
// lost or the key is no longer this registration's. It returns when ctx is
// cancelled (by Close) or the registration is over.
func (g *Registration) watchKey(ctx context.Context) {
	defer close(g.watchDone)
	inc := g.Node().Incarnation
	rev := inc
	for {
		gone, broke := g.watchFrom(ctx, &rev)
		if ctx.Err() != nil {
			return
		}
		if !gone && !broke { // the lease ended
			g.end()
			return
		}
		if broke {
			// The watch broke (etcd restarted, the revision was compacted,
			// no leader): read the key to learn where it stands.
			sleep(ctx, 250*time.Millisecond)
			if ctx.Err() != nil {
				return
			}
			gctx, cancel := context.WithTimeout(ctx, time.Second)
			resp, err := g.r.cli.Get(gctx, g.key)
			cancel()
			if err != nil {
				continue
			}
			kvs := resp.Kvs
			gone = len(kvs) == 0 || kvs[0].Lease != int64(g.ID()) || kvs[0].CreateRevision != inc
			rev = resp.Header.Revision
		}
		if gone {
			g.keyGone(ctx)
			return
		}
	}
}

// watchFrom watches the key after *rev until the key is no longer this
// registration's (gone), the watch breaks (broke), or the lease ends
// (neither). It advances *rev past every event seen.
func (g *Registration) watchFrom(ctx context.Context, rev *int64) (gone, broke bool) {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	wch := g.r.cli.Watch(wctx, g.key, clientv3.WithRev(*rev+1))
	for {
		select {
		case <-g.Lease.Done():
			return false, false
		case wr, ok := <-wch:
			if !ok || wr.Canceled || wr.Err() != nil {
				return false, true
			}
			for _, ev := range wr.Events {
				*rev = ev.Kv.ModRevision
				if ev.Type == clientv3.EventTypeDelete || ev.Kv.Lease != int64(g.ID()) {
					return true, false
				}
			}
		}
	}
}

// keyGone ends the registration whose key is gone. If the lease still
// lives, the key was deleted by hand: the lease is no longer kept alive (it
// expires within its TTL, or its owner revokes it) and Err is
// ErrKeyDeleted. Otherwise the lease expired, and Err is ErrLeaseLost.
func (g *Registration) keyGone(ctx context.Context) {
	tctx, cancel := context.WithTimeout(ctx, time.Second)
	ttl, err := g.r.cli.TimeToLive(tctx, g.ID())
	cancel()
	if err == nil && ttl.TTL <= 0 {
		g.Lease.setErr(ErrLeaseLost)
	} else {
		g.mu.Lock()
		g.err = ErrKeyDeleted
		g.mu.Unlock()
	}
	g.Lease.cancel() // stop the keep-alive
	<-g.Lease.Done()
	g.end()
}
