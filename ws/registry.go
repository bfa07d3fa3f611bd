package ws

import (
	"context"
	"os"
	"sync"
	"time"

	"github.com/pubmesh/pubmesh/discovery"
	"github.com/pubmesh/pubmesh/internal/version"
)

// gatewayUpdateInterval is how often a gateway rewrites its counts in its
// registry key: often enough for `pubmesh gateways`, rarely enough that
// a thousand gateways do not load etcd.
const gatewayUpdateInterval = 5 * time.Second

// gatewayLeaseTTL is the registry lease: a crashed gateway leaves the list
// within it.
const gatewayLeaseTTL = 10 * time.Second

// gatewayRegistry keeps the gateway's key in etcd
// (<prefix>/<cluster>/gateways/<id>, discovery.GatewayInfo) as the fanout
// client keeps its own: registered under a lease, updated every
// gatewayUpdateInterval, registered again when etcd confirms the lease
// lost, deleted (the lease revoked) on stop.
type gatewayRegistry struct {
	h      *Handler
	info   discovery.GatewayInfo
	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{}

	mu  sync.Mutex // guards reg
	reg *discovery.GatewayRegistration
}

// startCluster starts what the gateway shares with the rest of the
// cluster: presence, join/leave events, the server API.
func (h *Handler) startCluster() error {
	if err := h.startPresence(); err != nil {
		return err
	}
	return h.startControl()
}

// stopCluster undoes startCluster (and the registry, if registered), once
// the sessions are gone.
func (h *Handler) stopCluster() {
	h.regMu.Lock()
	gr := h.greg
	h.regMu.Unlock()
	if gr != nil {
		gr.stop()
	}
	if h.ctl != nil {
		h.ctl.close()
	}
	if h.pres != nil {
		h.pres.close()
	}
}

// RegisterGateway announces the handler in etcd as a gateway reachable at
// url (its public base URL), until Shutdown. StartGateway calls it; a
// Handler served some other way may too. It returns once the first
// registration is written, or fails (the gateway keeps trying in the
// background).
func (h *Handler) RegisterGateway(ctx context.Context, url string) error {
	host, _ := os.Hostname()
	gr := &gatewayRegistry{h: h, done: make(chan struct{}), info: discovery.GatewayInfo{
		ID: h.client.ID(), URL: url, Host: host, PID: os.Getpid(), StartedAt: time.Now().UTC(), Version: version.Version,
	}}
	gr.ctx, gr.cancel = context.WithCancel(context.Background())
	h.regMu.Lock()
	h.greg = gr
	h.regMu.Unlock()
	err := gr.register(ctx)
	go gr.run()
	return err
}

func (gr *gatewayRegistry) register(ctx context.Context) error {
	info := gr.info
	info.Connections, info.Subscriptions, info.Channels = gr.h.counts()
	info.UpdatedAt = time.Now().UTC()
	reg, err := gr.h.client.Registry().RegisterGateway(ctx, info, gatewayLeaseTTL)
	if err != nil {
		return err
	}
	gr.mu.Lock()
	gr.reg = reg
	gr.mu.Unlock()
	return nil
}

func (gr *gatewayRegistry) current() *discovery.GatewayRegistration {
	gr.mu.Lock()
	defer gr.mu.Unlock()
	return gr.reg
}

// run updates the counts and registers again after a lost lease.
func (gr *gatewayRegistry) run() {
	defer close(gr.done)
	t := time.NewTicker(gatewayUpdateInterval)
	defer t.Stop()
	for {
		reg := gr.current()
		var lost <-chan struct{}
		if reg != nil {
			lost = reg.Done()
		}
		select {
		case <-gr.ctx.Done():
			return
		case <-lost:
			gr.h.log.Warn("ws: gateway registration lost, registering again", "err", reg.Err())
			gr.mu.Lock()
			gr.reg = nil
			gr.mu.Unlock()
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(gr.ctx, gatewayUpdateInterval)
		if reg = gr.current(); reg == nil {
			if err := gr.register(ctx); err != nil && gr.ctx.Err() == nil {
				gr.h.log.Warn("ws: gateway registration failed, retrying", "err", err)
			}
		} else {
			conns, subs, chans := gr.h.counts()
			err := reg.Update(ctx, func(gi *discovery.GatewayInfo) {
				gi.Connections, gi.Subscriptions, gi.Channels, gi.UpdatedAt = conns, subs, chans, time.Now().UTC()
			})
			if err != nil && gr.ctx.Err() == nil {
				gr.h.log.Warn("ws: gateway registration update failed", "err", err)
			}
		}
		cancel()
	}
}

// stop deletes the key (revokes the lease).
func (gr *gatewayRegistry) stop() {
	gr.cancel()
	<-gr.done
	if reg := gr.current(); reg != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		reg.Close(ctx)
		cancel()
	}
}
