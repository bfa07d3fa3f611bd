package discovery

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// GatewayInfo is the value at <prefix>/<cluster>/gateways/<id>: a running
// WebSocket gateway, so that the server API and `pubmesh gateways` can
// reach every gateway of the cluster. The counts are refreshed every few
// seconds, not on every change: they are for people and for the server
// API's fan-out, not for exact accounting.
type GatewayInfo struct {
	// ID is the gateway's fanout client id.
	ID string `json:"id"`
	// URL is the gateway's public base URL, such as "http://10.0.0.5:8080/".
	URL       string    `json:"url"`
	Host      string    `json:"host,omitempty"`
	PID       int       `json:"pid,omitempty"`
	StartedAt time.Time `json:"started_at"`
	Version   string    `json:"version"`
	// Connections by transport ("websocket", "sse", ...).
	Connections map[string]int `json:"connections"`
	// Subscriptions is the sum over the gateway's sessions of their
	// subscriptions; Channels the distinct channels among them.
	Subscriptions int `json:"subscriptions"`
	Channels      int `json:"channels"`
	// UpdatedAt is when the counts were taken.
	UpdatedAt time.Time `json:"updated_at"`
}

// TotalConnections is the sum of Connections over every transport.
func (g GatewayInfo) TotalConnections() int {
	n := 0
	for _, c := range g.Connections {
		n += c
	}
	return n
}

// ErrGatewayIDTaken is how RegisterGateway fails when a live gateway
// already holds the id.
var ErrGatewayIDTaken = errors.New("discovery: a live gateway already has this id")

func (k keys) gateways() string         { return k.root + "gateways/" }
func (k keys) gateway(id string) string { return k.gateways() + id }

// GatewayRegistration is a gateway's key under its own lease: it vanishes
// when the gateway stops (Close) or stops refreshing the lease (a crash).
type GatewayRegistration struct {
	*leasedValue[GatewayInfo]
	id string
}

// RegisterGateway writes info under a new lease of ttl. The key is created
// only if no live gateway holds the id; otherwise it fails wrapping
// ErrGatewayIDTaken and leaves the other gateway's key alone.
func (r *Registry) RegisterGateway(ctx context.Context, info GatewayInfo, ttl time.Duration) (*GatewayRegistration, error) {
	if err := ValidID(info.ID); err != nil {
		return nil, err
	}
	l, err := createLeased(ctx, r.cli, r.cfg.Logger, r.keys.gateway(info.ID), "gateway "+info.ID, info, ttl, ErrGatewayIDTaken)
	if err != nil {
		return nil, err
	}
	return &GatewayRegistration{leasedValue: l, id: info.ID}, nil
}

// Update changes the gateway's value with fn and writes it under the same
// lease, only while the key still belongs to this lease (ErrLeaseLost
// otherwise).
func (g *GatewayRegistration) Update(ctx context.Context, fn func(*GatewayInfo)) error {
	return g.update(ctx, fn, func(i *GatewayInfo) { i.ID = g.id })
}

// Info returns the gateway's value as last written.
func (g *GatewayRegistration) Info() GatewayInfo { return g.value() }

// Gateways lists the registered gateways, sorted by id. A value that does
// not decode is listed with its id only.
func (r *Registry) Gateways(ctx context.Context) ([]GatewayInfo, error) {
	resp, err := r.cli.Get(ctx, r.keys.gateways(), clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("discovery: list gateways: %w", err)
	}
	out := make([]GatewayInfo, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		var gi GatewayInfo
		if json.Unmarshal(kv.Value, &gi) != nil {
			gi = GatewayInfo{}
		}
		gi.ID = strings.TrimPrefix(string(kv.Key), r.keys.gateways())
		out = append(out, gi)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}
