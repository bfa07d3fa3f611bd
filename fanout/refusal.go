package fanout

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"strings"

	"github.com/redis/go-redis/v9"
)

// NodeError is a node that refused this client: wrong credentials or
// missing permissions (WRONGPASS, NOAUTH, NOPERM), or a TLS failure (a
// certificate not signed by a trusted CA, expired, for another host, or
// refused by the node). Retrying does not help until the configuration
// changes, so Subscribe returns it instead of waiting, and Publish wraps it
// in ErrNoNodes when no other node took the message. The client keeps
// trying the node (about once a second) in case it is fixed.
type NodeError struct {
	Node string // node id
	Addr string // host:port
	Err  error
}

func (e *NodeError) Error() string {
	return fmt.Sprintf("fanout: node %s (%s): %v", e.Node, e.Addr, e.Err)
}

func (e *NodeError) Unwrap() error { return e.Err }

// errPlainNode is the dial error of a node registered without tls, for a
// client with TLS settings.
var errPlainNode = errors.New("registered without tls, and this client has TLS settings: it does not send credentials in plain text")

// isRefusal reports whether err says the node refused our credentials or
// our TLS, as opposed to being down or slow.
func isRefusal(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, errPlainNode) {
		return true
	}
	var rerr redis.Error
	if errors.As(err, &rerr) {
		msg := rerr.Error()
		for _, p := range []string{"WRONGPASS", "NOAUTH", "NOPERM"} {
			if strings.HasPrefix(msg, p) {
				return true
			}
		}
	}
	var (
		verr  *tls.CertificateVerificationError
		ua    x509.UnknownAuthorityError
		inv   x509.CertificateInvalidError
		host  x509.HostnameError
		rec   tls.RecordHeaderError
		alert tls.AlertError
		op    *net.OpError
	)
	if errors.As(err, &op) && op.Op == "remote error" {
		// crypto/tls reports an alert from the peer this way: the node
		// refused our certificate (missing, expired, unknown CA).
		return true
	}
	return errors.As(err, &verr) || errors.As(err, &ua) || errors.As(err, &inv) ||
		errors.As(err, &host) || errors.As(err, &rec) || errors.As(err, &alert)
}

// cause strips this package's own "fanout: ..." wrapping, so a NodeError
// says what the node said, once.
func cause(err error) error {
	for strings.HasPrefix(err.Error(), "fanout: ") {
		u := errors.Unwrap(err)
		if u == nil {
			break
		}
		err = u
	}
	return err
}

// refusal records that the node refused the client (err is a refusal):
// the first time it is logged as an error and wakes Subscribe calls waiting
// for the node. It returns the error as a *NodeError.
func (nc *nodeConn) refusal(err error) *NodeError {
	err = cause(err)
	if nc.node.TLS && nc.c.cfg.TLS == nil {
		err = fmt.Errorf("%w (the node requires TLS: give the client the CA that signed its certificate, e.g. --redis-cacert)", err)
	}
	ne := &NodeError{Node: nc.node.ID, Addr: nc.node.Addr, Err: err}
	nc.c.m.refusals.Inc()
	if nc.refusedErr.Swap(ne) == nil {
		nc.c.log.Error("fanout: node refused this client: check the Redis password, user and TLS settings", "node", nc.node.ID, "addr", nc.node.Addr, "err", err)
	}
	nc.refusedOnce.Do(func() { close(nc.refused) })
	return ne
}

// waitSubscribed waits until the node confirmed the client's first
// subscription set, refused the client, or ctx or the conn ended. It
// returns the refusal, if that came first and the node has not accepted
// the client since.
func (nc *nodeConn) waitSubscribed(ctx context.Context) (ok bool, err error) {
	// A node whose first subscription attempt failed (down, or cut off by
	// a partition: the dial failed or timed out) is not waited for: its conn
	// subscribes the client's current set, this subscription included, once
	// it answers. A node that is merely slow is waited for.
	select {
	case <-nc.subscribed:
		return true, nil
	case <-nc.refused:
	case <-nc.failed:
		select {
		case <-nc.subscribed:
			return true, nil
		case <-nc.refused:
		default:
			nc.c.log.Warn("fanout: node not answering; subscribing there when it does", "node", nc)
			return false, nil
		}
	case <-ctx.Done():
		return false, nil
	case <-nc.ctx.Done():
		return false, nil
	}
	select {
	case <-nc.subscribed:
		return true, nil
	default:
	}
	if ne := nc.refusedErr.Load(); ne != nil {
		return false, ne
	}
	return false, nil
}
