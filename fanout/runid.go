package fanout

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/redis/go-redis/v9"
)

// errRestarted is why a connection to a node's address is refused when the
// Redis there is not the run the node registered: the process restarted
// (its agent restarts it after a crash), and the new one has none of the
// subscriptions. A publish it took would reach nobody, so it fails and is
// retried on another node, until the agent registers the new run.
var errRestarted = errors.New("fanout: the Redis at the node's address restarted since it registered (run_id changed)")

// isRunID reports whether s is a Redis run_id: 40 hex digits. Only such a
// RunID is checked; a registry entry without one (an older agent) is not.
func isRunID(s string) bool {
	if len(s) != 40 {
		return false
	}
	for _, r := range s {
		if !strings.ContainsRune("0123456789abcdef", r) {
			return false
		}
	}
	return true
}

// checkRunID is the OnConnect hook of a node's connections: every new
// connection asks the server for its run_id and refuses a server that is
// not the registered run.
func checkRunID(want string) func(context.Context, *redis.Conn) error {
	return func(ctx context.Context, cn *redis.Conn) error {
		info, err := cn.Info(ctx, "server").Result()
		if err != nil {
			return fmt.Errorf("fanout: check run_id: %w", err)
		}
		return runIDMatches(info, want)
	}
}

// runIDMatches checks the run_id in the text of INFO server.
func runIDMatches(info, want string) error {
	for _, line := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "run_id:"); ok {
			if v != want {
				return fmt.Errorf("%w: registered %s, found %s", errRestarted, want, v)
			}
			return nil
		}
	}
	return fmt.Errorf("fanout: check run_id: no run_id in INFO server")
}
