package fanout

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/pubmesh/pubmesh/discovery"
)

// Backoff of New while etcd does not answer: from the first to the longest
// wait between two attempts.
const (
	etcdRetryFirst = 200 * time.Millisecond
	etcdRetryMax   = 5 * time.Second
)

// untilEtcd runs op until it succeeds, fails for a reason retrying cannot
// fix, or ctx ends. A cold start where etcd comes up after its clients
// (or a slow etcd) thus makes New wait, logging what it waits for, rather
// than fail and crash-loop. what names the step in logs and errors.
func (c *Client) untilEtcd(ctx context.Context, what string, op func(context.Context) error) error {
	wait := etcdRetryFirst
	var takenSince time.Time
	for attempt := 0; ; attempt++ {
		err := op(ctx)
		if errors.Is(err, discovery.ErrClientIDTaken) {
			// Maybe our own previous run, whose lease has not expired yet:
			// wait one lease TTL for it, then the id is really taken.
			if takenSince.IsZero() {
				takenSince = time.Now()
			} else if time.Since(takenSince) > c.cfg.LeaseTTL+time.Second {
				return err
			}
		}
		if err == nil {
			if attempt > 0 {
				c.log.Info("fanout: etcd answers", "step", what, "attempts", attempt+1)
			}
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("fanout: %s: %w (last error: %v)", what, ctx.Err(), err)
		}
		if !retryable(err) {
			return fmt.Errorf("fanout: %s: %w", what, err)
		}
		if attempt%10 == 0 {
			c.log.Warn("fanout: waiting for etcd", "step", what, "endpoints", strings.Join(c.cfg.Etcd.Endpoints, ","),
				"err", err, "retry_in", wait)
		}
		sleep(ctx, wait)
		wait = min(wait*2, etcdRetryMax)
	}
}

// retryable reports whether err may go away by itself (etcd down, not yet
// up, no leader), as opposed to a configuration mistake (credentials, TLS)
// that New reports at once.
func retryable(err error) bool {
	for _, perm := range []error{rpctypes.ErrAuthFailed, rpctypes.ErrPermissionDenied, rpctypes.ErrUserEmpty,
		rpctypes.ErrAuthNotEnabled, rpctypes.ErrInvalidAuthToken, rpctypes.ErrInvalidAuthMgmt} {
		if errors.Is(err, perm) {
			return false
		}
	}
	// discovery.Dial explains TLS mistakes (an unknown CA, TLS spoken to
	// a plain endpoint) in its message.
	msg := err.Error()
	return !strings.Contains(msg, "TLS") && !strings.Contains(msg, "no etcd endpoints")
}

// etcdClient is the etcd client New uses: Config.EtcdClient, or one it
// dials, waiting for etcd.
func (c *Client) etcdClient(ctx context.Context) (*clientv3.Client, bool, error) {
	if c.cfg.EtcdClient != nil {
		return c.cfg.EtcdClient, false, nil
	}
	var cli *clientv3.Client
	err := c.untilEtcd(ctx, "connect to etcd", func(ctx context.Context) error {
		var err error
		cli, err = discovery.Dial(ctx, c.cfg.Etcd)
		return err
	})
	return cli, err == nil, err
}
