package ws

import (
	"context"
	"net/http"
	"sort"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/pubmesh/pubmesh/discovery"
	"github.com/pubmesh/pubmesh/fanout"
)

// adminMaxChannels is how many channels the overview lists, the busiest
// first; it says how many there are in all.
const adminMaxChannels = 100

// adminOverview is GET /admin/api/overview, which the page polls.
type adminOverview struct {
	Cluster string    `json:"cluster"`
	Gateway string    `json:"gateway"` // this gateway's id
	At      time.Time `json:"at"`
	// Stale is true when etcd could not be read: the nodes are the
	// gateway's last snapshot.
	Stale    bool                    `json:"stale"`
	Error    string                  `json:"error,omitempty"`
	Nodes    []adminNode             `json:"nodes"`
	Gateways []discovery.GatewayInfo `json:"gateways"`
	Clients  []discovery.ClientInfo  `json:"clients"`
	// ConfigRevision is the configuration revision in etcd: a client
	// whose ConfigRevision differs has not applied it (yet).
	ConfigRevision int64 `json:"config_revision"`
	// Channels are the channels with subscribers on some gateway, with
	// the sum of their subscribers over the gateways that answered
	// (ChannelsFrom: "cluster", "partial" when some did not, "local"
	// when only this gateway's counts were available).
	Channels      []adminChannel `json:"channels"`
	ChannelsTotal int            `json:"channels_total"`
	ChannelsFrom  string         `json:"channels_from"`
	Rate          adminRate      `json:"rate"`
}

// adminNode is a node's registration and what its Redis reports.
type adminNode struct {
	discovery.Node
	Incarnation int64 `json:"incarnation"`
	// ConfigRevision shadows the Node's, which is left out when 0.
	ConfigRevision   int64  `json:"config_revision"`
	UsedMemory       string `json:"used_memory_human,omitempty"`
	MaxMemory        string `json:"maxmemory_human,omitempty"`
	ConnectedClients string `json:"connected_clients,omitempty"`
	// InfoError is why INFO could not be read from this gateway.
	InfoError string `json:"info_error,omitempty"`
}

type adminChannel struct {
	Name        string `json:"name"`
	Subscribers int    `json:"subscribers"`
}

// adminRate is this gateway's message rate, per second, over the time
// between two samples (the page's polls, at least a second apart).
type adminRate struct {
	Published float64 `json:"published"` // publishes taken by this gateway (WebSocket and HTTP)
	Received  float64 `json:"received"`  // messages received from the cluster for its subscribers
	Delivered float64 `json:"delivered"` // message frames written to its clients
	Window    float64 `json:"window_seconds"`
}

// serveOverview gathers the page's data. Each source has its own bound,
// so a slow node or gateway shows as an error or a partial count, not as
// a page that hangs.
func (a *admin) serveOverview(w http.ResponseWriter, r *http.Request) {
	h := a.h
	reg := h.client.Registry()
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	out := adminOverview{Cluster: reg.Cluster(), Gateway: h.client.ID(), At: time.Now().UTC(),
		Nodes: []adminNode{}, Gateways: []discovery.GatewayInfo{}, Clients: []discovery.ClientInfo{}, Channels: []adminChannel{}}

	nodes, _, err := reg.List(ctx) // as pubmesh nodes reads them
	if err != nil {
		out.Stale, out.Error = true, err.Error()
		nodes = h.client.Nodes().Nodes
	}
	info := map[string]fanout.NodeServerInfo{}
	for _, ni := range h.client.NodeServerInfo(ctx, []string{"server", "memory", "clients"},
		[]string{"redis_version", "used_memory_human", "maxmemory_human", "connected_clients"}) {
		info[ni.ID] = ni
	}
	for _, n := range nodes {
		v := adminNode{Node: n, Incarnation: n.Incarnation, ConfigRevision: n.ConfigRevision}
		if ni, ok := info[n.ID]; !ok {
			v.InfoError = "this gateway has no connection to the node"
		} else if ni.Error != "" {
			v.InfoError = ni.Error
		} else {
			if rv := ni.Fields["redis_version"]; rv != "" {
				v.RedisVersion = rv
			}
			v.UsedMemory, v.MaxMemory, v.ConnectedClients = ni.Fields["used_memory_human"], ni.Fields["maxmemory_human"], ni.Fields["connected_clients"]
		}
		out.Nodes = append(out.Nodes, v)
	}
	if gws, err := reg.Gateways(ctx); err == nil {
		out.Gateways = gws
	}
	if cls, err := reg.Clients(ctx); err == nil {
		out.Clients = cls
	}
	if cur, err := reg.Config(ctx); err == nil {
		out.ConfigRevision = cur.Revision
	}
	out.Channels, out.ChannelsTotal, out.ChannelsFrom = a.channels(ctx)
	out.Rate = a.sampleRate()
	writeJSON(w, http.StatusOK, out)
}

// channels asks every gateway for its channels' subscriber counts (the
// server API's "channels" request): what browsers are subscribed to,
// which PUBSUB NUMSUB on the nodes cannot tell (there each gateway is one
// subscriber, whatever its clients). Without an answer in time it falls
// back to this gateway's own hub.
func (a *admin) channels(ctx context.Context) ([]adminChannel, int, string) {
	from := "cluster"
	counts := map[string]int{}
	actx, cancel := context.WithTimeout(ctx, time.Second)
	ans, missing, err := a.h.ctl.ask(actx, controlRequest{Op: "channels"})
	cancel()
	if err != nil || len(ans) == 0 {
		from, counts = "local", a.h.hub.counts("")
	} else {
		if len(missing) > 0 {
			from = "partial"
		}
		for _, g := range ans {
			for name, n := range g.Channels {
				counts[name] += n
			}
		}
	}
	list := make([]adminChannel, 0, len(counts))
	for name, n := range counts {
		list = append(list, adminChannel{Name: name, Subscribers: n})
	}
	sort.Slice(list, func(i, j int) bool {
		if list[i].Subscribers != list[j].Subscribers {
			return list[i].Subscribers > list[j].Subscribers
		}
		return list[i].Name < list[j].Name
	})
	total := len(list)
	if len(list) > adminMaxChannels {
		list = list[:adminMaxChannels]
	}
	return list, total, from
}

// rateMeter turns the gateway's counters into rates between samples.
type rateMeter struct {
	at                             time.Time
	published, received, delivered float64
	last                           adminRate
}

// sampleRate reads the counters and returns the rate since the previous
// sample, or the previous rate when that sample is under a second old
// (several open pages share the meter).
func (a *admin) sampleRate() adminRate {
	m := a.h.metrics
	now := time.Now()
	pub, rec, del := counterSum(m.messagesIn), counterSum(m.messagesFanout), counterSum(m.messagesOut)
	a.rateMu.Lock()
	defer a.rateMu.Unlock()
	rm := &a.rate
	if rm.at.IsZero() || now.Sub(rm.at) >= time.Second {
		if !rm.at.IsZero() {
			dt := now.Sub(rm.at).Seconds()
			rm.last = adminRate{Published: (pub - rm.published) / dt, Received: (rec - rm.received) / dt,
				Delivered: (del - rm.delivered) / dt, Window: dt}
		}
		rm.at, rm.published, rm.received, rm.delivered = now, pub, rec, del
	}
	return rm.last
}

// counterSum is the sum of a counter's (or counter vector's) values.
func counterSum(c prometheus.Collector) float64 {
	ch := make(chan prometheus.Metric, 16)
	go func() { c.Collect(ch); close(ch) }()
	sum := 0.0
	for m := range ch {
		var d dto.Metric
		if m.Write(&d) == nil && d.Counter != nil {
			sum += d.Counter.GetValue()
		}
	}
	return sum
}
