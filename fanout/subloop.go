package fanout

import (
	"errors"
	"fmt"
	"strconv"
	"time"
)

// subCmd is one change to a node's subscriptions. The node's subscription
// loop runs them in the order they were queued, so an UNSUBSCRIBE and a
// later SUBSCRIBE of the same name reach the node in that order.
type subCmd struct {
	unsub    bool
	patterns bool
	names    []string
	done     chan error // subscribe only, buffered: the fence's outcome
}

// probeEvery is how often an idle subscription loop checks, with a fence,
// that its node still answers on the subscription connection, so that
// Health notices a node that went silent without breaking the connection
// (a stopped process, a partition).
const probeEvery = 5 * time.Second

// maxQueuedSubs bounds the subscribe commands waiting for one node (a
// silent node's queue would otherwise grow with every Subscribe until the
// node is retired).
const maxQueuedSubs = 1024

// errSubQueueFull answers a subscribe that found the node's queue full.
var errSubQueueFull = errors.New("fanout: subscription queue of the node is full; it gets the whole set once it answers")

// queueSub queues cmd for the node's subscription loop; it never blocks.
// Unsubscribes are merged into one set per kind, so they take no more room
// than the names. A subscribe over maxQueuedSubs is answered at once with
// errSubQueueFull, counted, and the node gets the client's whole set (this
// subscription's names included) once the loop catches up.
func (nc *nodeConn) queueSub(cmd subCmd) {
	nc.subQMu.Lock()
	switch {
	case cmd.unsub:
		set := &nc.unsubC
		if cmd.patterns {
			set = &nc.unsubP
		}
		if *set == nil {
			*set = map[string]struct{}{}
		}
		for _, n := range cmd.names {
			(*set)[n] = struct{}{}
		}
	case len(nc.subQ) >= maxQueuedSubs:
		nc.subQMu.Unlock()
		nc.c.m.subQueueFull.Inc()
		nc.resubAll.Store(true)
		if cmd.done != nil {
			cmd.done <- errSubQueueFull
		}
		nc.wakeSub()
		return
	default:
		nc.subQ = append(nc.subQ, cmd)
	}
	nc.subQMu.Unlock()
	nc.wakeSub()
}

func (nc *nodeConn) wakeSub() {
	select {
	case nc.subWake <- struct{}{}:
	default:
	}
}

// takeSub takes the queued subscribes, then the merged unsubscribes.
func (nc *nodeConn) takeSub() []subCmd {
	nc.subQMu.Lock()
	defer nc.subQMu.Unlock()
	q := nc.subQ
	nc.subQ = nil
	for _, u := range []struct {
		set      *map[string]struct{}
		patterns bool
	}{{&nc.unsubC, false}, {&nc.unsubP, true}} {
		if len(*u.set) == 0 {
			continue
		}
		names := make([]string, 0, len(*u.set))
		for n := range *u.set {
			names = append(names, n)
		}
		*u.set = nil
		q = append(q, subCmd{unsub: true, patterns: u.patterns, names: names})
	}
	return q
}

// subscribeAsync queues a SUBSCRIBE (PSUBSCRIBE) of names; the returned
// channel gets nil once the node confirmed it, or the error.
func (nc *nodeConn) subscribeAsync(chans, pats []string) <-chan error {
	done := make(chan error, 1)
	names, patterns := chans, false
	if len(pats) > 0 {
		names, patterns = pats, true
	}
	nc.queueSub(subCmd{names: names, patterns: patterns, done: done})
	return done
}

// unsubscribeAsync queues an UNSUBSCRIBE of names. When the loop gets to
// it, names that have a subscriber again are left subscribed: the
// client's registry is the truth, so a late UNSUBSCRIBE never undoes a
// newer Subscribe.
func (nc *nodeConn) unsubscribeAsync(names []string, patterns bool) {
	nc.queueSub(subCmd{unsub: true, patterns: patterns, names: names})
}

// subLoop is the only writer of SUBSCRIBE, UNSUBSCRIBE and fences on ps.
// It first subscribes the client's whole set (again until the node
// confirms it), then runs queued commands in order. Each command has no
// deadline of its own beyond go-redis's write timeout, and nothing is
// shared with other nodes: a silent node delays only its own commands,
// and no command fails for lack of time a node before it used up (go-redis
// closes a subscription connection whose command ran out of time, and
// every channel on it missed messages until it was back).
func (nc *nodeConn) subLoop() {
	defer nc.wg.Done()
	defer nc.failSub()
	first, failures := true, 0
	probe := time.NewTimer(probeEvery)
	defer probe.Stop()
	retry := time.NewTimer(time.Hour)
	defer retry.Stop()
	for {
		cmds := nc.takeSub()
		all := first || nc.resubAll.Swap(false)
		check := all || nc.recheck.Swap(false)
		if len(cmds) > 0 || check {
			err := nc.runSub(cmds, all)
			if nc.ctx.Err() != nil {
				return
			}
			if err == nil {
				failures = 0
				nc.subUp.Store(true)
				nc.noteAnswered()
				if first {
					first = false
					close(nc.subscribed)
					nc.c.membershipChanged()
				}
			} else {
				failures++
				nc.subFailed(err, first, failures)
				nc.recheck.Store(true)
				if all && !first {
					nc.resubAll.Store(true) // the whole set is still owed
				}
			}
		}
		retry.Stop()
		if first || nc.recheck.Load() {
			retry.Reset(min(time.Duration(failures)*50*time.Millisecond, time.Second))
		}
		select {
		case <-nc.ctx.Done():
			return
		case <-nc.subWake:
		case <-retry.C:
		case <-probe.C:
			nc.recheck.Store(true)
			probe.Reset(probeEvery)
		}
	}
}

// subFailed records a failed subscription command or fence.
func (nc *nodeConn) subFailed(err error, first bool, failures int) {
	nc.subUp.Store(false)
	nc.lastErr.Store(&errBox{err})
	if isRefusal(err) {
		nc.refusal(err) // logged once, as an error
		return
	}
	if first {
		nc.failedOnce.Do(func() { close(nc.failed) })
	} else if refusedDial(err) {
		nc.noteRefused(err)
	}
	if nc.retired.Load() {
		nc.c.log.Debug("fanout: node that left does not answer", "node", nc, "err", err)
	} else if failures%20 == 1 {
		nc.c.log.Warn("fanout: cannot confirm subscriptions on node, retrying", "node", nc, "err", err)
	}
}

// runSub sends the commands in order, after the client's whole set when
// all is set, and ends with one fence when anything needs confirming. Each
// subscribe command gets the outcome.
func (nc *nodeConn) runSub(cmds []subCmd, all bool) error {
	var err error
	if nc.current() == nil {
		// A new connection has nothing subscribed: the whole set goes.
		if _, err = nc.connect(); err != nil {
			err = fmt.Errorf("fanout: subscription connection to %s: %w", nc, err)
		}
		all = true
	}
	if all && err == nil {
		chans, pats := nc.c.subs.names()
		err = nc.send(false, false, chans)
		if err == nil {
			err = nc.send(false, true, pats)
		}
	}
	fence := all
	for _, cmd := range cmds {
		if cmd.unsub {
			var gone []string
			for _, n := range cmd.names {
				if !nc.c.subs.has(n, cmd.patterns) {
					gone = append(gone, n)
				}
			}
			if e := nc.send(true, cmd.patterns, gone); e != nil {
				nc.c.log.Debug("fanout: unsubscribe on node failed; the connection is made again without it", "node", nc, "err", e)
			}
			continue
		}
		fence = true
		if e := nc.send(false, cmd.patterns, cmd.names); e != nil && err == nil {
			err = e
		}
	}
	if len(cmds) == 0 {
		fence = true // a check
	}
	if fence && err == nil {
		err = nc.fence()
	}
	for _, cmd := range cmds {
		if cmd.done != nil {
			cmd.done <- err
		}
	}
	return err
}

// send writes one (P)SUBSCRIBE or (P)UNSUBSCRIBE on the current
// subscription connection; a write that fails closes it (the receive
// goroutine sees it, and the loop dials again).
func (nc *nodeConn) send(unsub, patterns bool, names []string) error {
	if len(names) == 0 {
		return nil
	}
	sc := nc.current()
	if sc == nil {
		return fmt.Errorf("fanout: (un)subscribe on %s: %w", nc, errSubClosed)
	}
	cmd := "SUBSCRIBE"
	switch {
	case unsub && patterns:
		cmd = "PUNSUBSCRIBE"
	case unsub:
		cmd = "UNSUBSCRIBE"
	case patterns:
		cmd = "PSUBSCRIBE"
	}
	if err := sc.write(append([]string{cmd}, names...)...); err != nil {
		return fmt.Errorf("fanout: (un)subscribe on %s: %w", nc, err)
	}
	return nil
}

// fence sends a PING with a unique token and waits for its PONG: Redis
// answers in order, so every command before it has been applied.
func (nc *nodeConn) fence() error {
	nc.fenceMu.Lock()
	nc.fenceSeq++
	token := "pubmesh-fence-" + strconv.FormatUint(nc.fenceSeq, 10)
	ch := make(chan struct{})
	nc.fences[token] = ch
	nc.fenceMu.Unlock()
	defer func() {
		nc.fenceMu.Lock()
		delete(nc.fences, token)
		nc.fenceMu.Unlock()
	}()
	sc := nc.current()
	if sc == nil {
		return fmt.Errorf("fanout: fence on %s: %w", nc, errSubClosed)
	}
	if err := sc.write("PING", token); err != nil {
		return fmt.Errorf("fanout: fence on %s: %w", nc, err)
	}
	t := time.NewTimer(nc.c.cfg.PublishTimeout + nc.c.cfg.DialTimeout)
	defer t.Stop()
	select {
	case <-ch:
		return nil
	case <-sc.done:
		return fmt.Errorf("fanout: fence on %s: %w", nc, errSubClosed)
	case <-t.C:
		return fmt.Errorf("fanout: fence on %s: no answer within %s", nc, nc.c.cfg.PublishTimeout+nc.c.cfg.DialTimeout)
	case <-nc.ctx.Done():
		return errNodeGone
	}
}

// failSub answers the commands still queued when the conn closes.
func (nc *nodeConn) failSub() {
	for _, cmd := range nc.takeSub() {
		if cmd.done != nil {
			cmd.done <- errNodeGone
		}
	}
}

// errBox holds an error in an atomic.Pointer.
type errBox struct{ err error }
