package fanout

// Order of async publishes per channel. A channel's PublishAsync calls
// from one goroutine are queued to one node's lane in call order, which
// Redis keeps. Two things could break it: a retry, which sends a failed
// message to another node while its successors are already queued; and
// a change of the channel's home (a node suspect, joined or gone), which
// would send new messages to another node while older ones are still in
// flight. So a publish goes straight to its node only while every attempt
// outstanding on its channel is on that same node and none waits for a
// retry; otherwise it waits in the channel's queue, which the retry
// goroutine sends, in order, once that holds again.

// asyncChannel is one channel's outstanding async attempts.
type asyncChannel struct {
	onNode      map[*nodeConn]int // attempts queued or in flight, per node
	failed      int               // failed attempts not sent again yet
	waiting     []*asyncReq       // publishes held back, in call order
	dispatching bool              // a dispatch job is queued or running
}

func (st *asyncChannel) idle() bool {
	return len(st.onNode) == 0 && st.failed == 0 && len(st.waiting) == 0 && !st.dispatching
}

// clearFor reports whether a publish homed on nc may be queued now.
func (st *asyncChannel) clearFor(nc *nodeConn) bool {
	if st.failed > 0 {
		return false
	}
	for n := range st.onNode {
		if n != nc {
			return false
		}
	}
	return true
}

// gate reports whether ar may be sent now; if not, it waits in its
// channel's queue.
func (a *asyncPublisher) gate(ar *asyncReq) bool {
	home := ar.home()
	a.mu.Lock()
	defer a.mu.Unlock()
	st := a.chans[ar.channel]
	if st == nil || a.closed { // closing: nothing would send what waits
		return true
	}
	if len(st.waiting) == 0 && !st.dispatching && st.clearFor(home) {
		return true
	}
	st.waiting = append(st.waiting, ar)
	a.maybeDispatch(ar.channel, st)
	return false
}

// attempting counts an attempt about to be queued to nc.
func (a *asyncPublisher) attempting(channel string, nc *nodeConn) {
	a.mu.Lock()
	defer a.mu.Unlock()
	st := a.chans[channel]
	if st == nil {
		st = &asyncChannel{onNode: map[*nodeConn]int{}}
		a.chans[channel] = st
	}
	st.onNode[nc]++
}

// attempted takes back an attempt on nc: answered, or not queued. A
// failed one stays counted (failed) until resent.
func (a *asyncPublisher) attempted(channel string, nc *nodeConn, failed bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	st := a.chans[channel]
	if st == nil {
		return
	}
	if st.onNode[nc]--; st.onNode[nc] <= 0 {
		delete(st.onNode, nc)
	}
	if failed {
		st.failed++
	}
	a.settle(channel, st)
}

// resent takes back a failed attempt once the retry goroutine sent it
// again (or gave it up).
func (a *asyncPublisher) resent(channel string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if st := a.chans[channel]; st != nil {
		st.failed--
		a.settle(channel, st)
	}
}

// settle forgets an idle channel or lets its waiting publishes go. a.mu
// is held.
func (a *asyncPublisher) settle(channel string, st *asyncChannel) {
	if st.idle() {
		delete(a.chans, channel)
		return
	}
	a.maybeDispatch(channel, st)
}

// maybeDispatch queues a dispatch job for the channel when publishes wait
// and no attempt is failed: the job sends those it may. a.mu is held.
func (a *asyncPublisher) maybeDispatch(channel string, st *asyncChannel) {
	if len(st.waiting) == 0 || st.dispatching || st.failed > 0 || len(st.onNode) > 1 {
		return
	}
	st.dispatching = true
	a.retries = append(a.retries, asyncRetry{channel: channel})
	a.kick()
}

// dispatch sends a channel's waiting publishes in order, on the retry
// goroutine, for as long as each one's home is clear.
func (a *asyncPublisher) dispatch(channel string) {
	for {
		a.mu.Lock()
		st := a.chans[channel]
		if st == nil || len(st.waiting) == 0 {
			if st != nil {
				st.dispatching = false
				a.settle(channel, st)
			}
			a.mu.Unlock()
			return
		}
		ar := st.waiting[0]
		a.mu.Unlock()
		// Route again: the ready set may have changed while it waited.
		if rs := a.c.ready.Load(); len(rs.conns) > 0 {
			ar.route(rs)
		}
		home := ar.home()
		a.mu.Lock()
		if !st.clearFor(home) {
			st.dispatching = false // the next answer on the channel kicks again
			a.mu.Unlock()
			return
		}
		st.waiting = st.waiting[1:]
		a.mu.Unlock()
		ar.mu.Lock()
		if home == nil {
			ar.lastErr = ErrNoNodes
		}
		ar.send(a.c.ctx)
		ar.mu.Unlock()
	}
}
