package ws

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics of one Handler, registered in Config.Metrics.
type metrics struct {
	connections     prometheus.Gauge
	connects        prometheus.Counter
	subscriptions   prometheus.Gauge // client subscriptions
	channels        prometheus.Gauge // fanout subscriptions held by the hub
	messagesIn      *prometheus.CounterVec
	messagesFanout  prometheus.Counter // received from the fanout client
	messagesOut     prometheus.Counter // message frames written to clients
	writeBatches    prometheus.Counter
	slowConsumers   prometheus.Counter
	errors          *prometheus.CounterVec
	authFailures    *prometheus.CounterVec
	closes          *prometheus.CounterVec
	subscribeErrors prometheus.Counter

	subjectConnRefusals prometheus.Counter // upgrades refused by MaxConnectionsPerSubject

	namespaceRefusals *prometheus.CounterVec // by op: a namespace allows it to no client
	anonymous         *prometheus.CounterVec // requests let in without a credential, by transport
	overrides         prometheus.Gauge       // Config fields that win over the cluster configuration

	recoveries      *prometheus.CounterVec // subscribes with since, by result
	historyRequests *prometheus.CounterVec // history reads, by transport

	streams      *prometheus.GaugeVec   // open streaming sessions, by transport (sse, stream)
	streamsTotal *prometheus.CounterVec // streaming sessions accepted, by transport
	refreshes    *prometheus.CounterVec // refresh ops, by result
}

func newMetrics(reg *prometheus.Registry) (*metrics, error) {
	m := &metrics{
		connections: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "pubmesh_ws_connections", Help: "Open WebSocket connections."}),
		connects: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pubmesh_ws_connections_total", Help: "WebSocket connections accepted."}),
		subscriptions: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "pubmesh_ws_subscriptions", Help: "Channel subscriptions of connected clients."}),
		channels: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "pubmesh_ws_channels", Help: "Channels the gateway is subscribed to through fanout (one per channel, however many clients)."}),
		messagesIn: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pubmesh_ws_messages_in_total", Help: "Messages published through the gateway, by source (ws or http)."}, []string{"source"}),
		messagesFanout: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pubmesh_ws_messages_received_total", Help: "Messages received from the fanout client (each encoded once)."}),
		messagesOut: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pubmesh_ws_messages_out_total", Help: "Message frames written to clients."}),
		writeBatches: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pubmesh_ws_write_batches_total", Help: "Flushes to client sockets; frames written / batches is the coalescing factor."}),
		slowConsumers: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pubmesh_ws_slow_consumer_disconnects_total", Help: "Connections closed with 4008 because their send queue overflowed."}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pubmesh_ws_errors_total", Help: "Error replies (WebSocket frames and HTTP), by code."}, []string{"code"}),
		authFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pubmesh_ws_auth_failures_total", Help: "Refused requests, by reason (missing, invalid, expired, origin)."}, []string{"reason"}),
		closes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pubmesh_ws_closes_total", Help: "Connections closed by the gateway, by close code."}, []string{"code"}),
		subscribeErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pubmesh_ws_fanout_subscribe_errors_total", Help: "Failed fanout subscriptions."}),
		subjectConnRefusals: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pubmesh_ws_subject_connection_refusals_total", Help: "WebSocket upgrades refused (429) because the token subject had MaxConnectionsPerSubject connections open."}),
		namespaceRefusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pubmesh_ws_namespace_refusals_total", Help: "Subscribes and publishes refused (forbidden) because the channel's namespace allows them to no client (allow_subscribe or allow_publish none), by op."}, []string{"op"}),
		anonymous: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pubmesh_ws_anonymous_requests_total", Help: "WebSocket connections (transport ws) and HTTP publishes (http) let in without a credential because a namespace allows anonymous clients."}, []string{"transport"}),
		overrides: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "pubmesh_ws_config_overrides", Help: "Limits set on this gateway (flags, ws.Config) that win over the cluster configuration."}),
		recoveries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pubmesh_ws_recoveries_total", Help: "Subscribes with since answered, by result: recovered (history proved it had every missed message) or not_recovered (recovered:false)."}, []string{"result"}),
		historyRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pubmesh_ws_history_requests_total", Help: "History reads answered, by transport: the history op (ws) and GET /api/history (http)."}, []string{"transport"}),
		streams: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "pubmesh_ws_streams", Help: "Open streaming sessions (WebSocket ones are pubmesh_ws_connections), by transport: sse (GET /sse) or stream (GET /api/stream)."}, []string{"transport"}),
		streamsTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pubmesh_ws_streams_total", Help: "Streaming sessions accepted, by transport (sse, stream)."}, []string{"transport"}),
		refreshes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pubmesh_ws_token_refreshes_total", Help: "refresh ops, by result: ok, invalid (expired or not valid), subject (a token for another subject)."}, []string{"result"}),
	}
	for _, c := range []prometheus.Collector{m.streams, m.streamsTotal, m.refreshes, m.connections, m.connects, m.subscriptions, m.channels, m.messagesIn,
		m.messagesFanout, m.messagesOut, m.writeBatches, m.slowConsumers, m.errors, m.authFailures, m.closes, m.subscribeErrors, m.subjectConnRefusals,
		m.namespaceRefusals, m.anonymous, m.overrides, m.recoveries, m.historyRequests} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("ws: register metrics: %w", err)
		}
	}
	// Make the labelled series visible at zero.
	for _, code := range []string{CodeBadRequest, CodeForbidden, CodeTooLarge, CodeRateLimited, CodeLimit, CodeUnavailable, CodeUnauthorized, CodeNoHistory} {
		m.errors.WithLabelValues(code)
	}
	for _, r := range []string{"missing", "invalid", "expired", "origin"} {
		m.authFailures.WithLabelValues(r)
	}
	for _, t := range []string{"ws", "http"} {
		m.messagesIn.WithLabelValues(t)
		m.anonymous.WithLabelValues(t)
		m.historyRequests.WithLabelValues(t)
	}
	for _, t := range []string{"sse", "stream"} {
		m.streams.WithLabelValues(t)
		m.streamsTotal.WithLabelValues(t)
		m.anonymous.WithLabelValues(t)
	}
	for _, r := range []string{"ok", "invalid", "subject"} {
		m.refreshes.WithLabelValues(r)
	}
	m.recoveries.WithLabelValues("recovered")
	m.recoveries.WithLabelValues("not_recovered")
	m.namespaceRefusals.WithLabelValues(OpSubscribe)
	m.namespaceRefusals.WithLabelValues(OpPublish)
	return m, nil
}
