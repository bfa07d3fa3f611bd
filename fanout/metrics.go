package fanout

import "github.com/prometheus/client_golang/prometheus"

// metrics are always counted; they are registered only when
// Config.Registerer is set.
type metrics struct {
	publishes           prometheus.Counter
	publishErrors       prometheus.Counter
	retries             prometheus.Counter
	deliveries          prometheus.Counter
	duplicates          prometheus.Counter
	overflowDrops       prometheus.Counter
	reordered           prometheus.Counter
	outOfOrder          prometheus.Counter
	gaps                prometheus.Counter
	reconnects          prometheus.Counter
	ackTimeouts         prometheus.Counter
	refusals            prometheus.Counter
	badReplies          prometheus.Counter
	memberGaps          prometheus.Counter
	gapDrops            prometheus.Counter
	subQueueFull        prometheus.Counter
	historyAppendErrors prometheus.Counter
	historyFills        prometheus.Counter
	recoveries          *prometheus.CounterVec
	stale               prometheus.Gauge
	nodes               *prometheus.GaugeVec
	publishLatency      prometheus.Histogram
	historyReads        prometheus.Counter
	historySharedReads  prometheus.Counter
	asyncPendingBytes   prometheus.Gauge
	asyncBlocked        prometheus.Counter
	downReports         prometheus.Counter
	downRemovals        prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	c := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Namespace: "pubmesh", Subsystem: "fanout", Name: name, Help: help})
	}
	m := &metrics{
		publishes:           c("publishes_total", "Messages accepted by at least one node."),
		publishErrors:       c("publish_errors_total", "Publish calls that returned an error."),
		retries:             c("publish_retries_total", "Publish attempts retried on another node after a failure."),
		deliveries:          c("deliveries_total", "Messages handed to subscriptions."),
		historyFills:        c("history_fills_total", "Reads of a node's history for a channel after the subscription connection to the node broke and came back, to deliver what it missed meanwhile."),
		historyAppendErrors: c("history_append_errors_total", "History publishes a full node refused (out of memory, nothing left to evict): sent live without history."),
		recoveries: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "pubmesh", Subsystem: "fanout", Name: "recoveries_total",
			Help: "History reads from a position (History with Since, SubscribeWith), by result: recovered (proven complete) or not_recovered."}, []string{"result"}),
		duplicates:    c("duplicates_dropped_total", "Messages dropped because their id was already delivered."),
		overflowDrops: c("overflow_drops_total", "Messages dropped from full subscription buffers (DropOldest)."),
		reordered:     c("reorder_holds_total", "Messages held back because they overtook an earlier message of the same publisher and channel."),
		outOfOrder:    c("out_of_order_total", "Messages delivered after a later message of the same publisher and channel."),
		gaps:          c("reorder_gaps_total", "Held messages released after ReorderWindow because their predecessor never came."),
		reconnects:    c("reconnects_total", "Subscription connections to nodes that broke and were re-established."),
		ackTimeouts:   c("ack_errors_total", "Acks to etcd that failed."),
		refusals:      c("node_refusals_total", "Connections or commands a node refused for credentials, permissions or TLS (see NodeError)."),
		badReplies:    c("bad_replies_total", "Connections to nodes closed because the node answered something that is not a Redis reply, or beyond Redis's own limits."),
		memberGaps:    c("membership_gaps_total", "Times the client's membership went stale long enough that nodes may have joined without it (each one a Gap on every Subscription)."),
		gapDrops:      c("gap_events_dropped_total", "Gap events dropped from full Subscription.Gaps buffers (8 each; the oldest goes)."),
		subQueueFull:  c("subscribe_queue_full_total", "Subscribe commands not queued for a node whose subscription queue was full (1024 waiting); the node gets the whole set again once it catches up."),
		stale: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "pubmesh", Subsystem: "fanout", Name: "membership_stale",
			Help: "1 while a Gap is open: the client may be missing nodes that joined while it was cut off from etcd."}),
		nodes: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "pubmesh", Subsystem: "fanout", Name: "nodes",
			Help: "Live nodes known to the client, by state."}, []string{"state"}),
		historyReads:       c("history_reads_total", "Reads of a channel's history from every node (each may serve several History calls)."),
		historySharedReads: c("history_shared_reads_total", "History calls served by a read that other calls asked for too (they came while an identical read ran, and shared the next)."),
		asyncPendingBytes: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "pubmesh", Subsystem: "fanout", Name: "async_pending_bytes",
			Help: "Payload bytes of PublishAsync calls not finished yet (bounded by MaxPendingPublishBytes)."}),
		downReports:  c("down_reports_total", "Reports written to etcd that a node refuses connections (its process is gone) while its key is still there."),
		downRemovals: c("down_removals_total", "Nodes whose key this client deleted because enough clients reported their connections refused (discovery.DownQuorum)."),
		asyncBlocked: c("async_blocked_total", "PublishAsync calls that waited because MaxPendingPublishBytes was reached."),
		publishLatency: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: "pubmesh", Subsystem: "fanout",
			Name: "publish_seconds", Help: "Time from Publish to acceptance by the node(s).",
			Buckets: prometheus.ExponentialBuckets(50e-6, 2, 16)}),
	}
	// Both results exist from the start, at 0, so dashboards and alerts see
	// them before the first recovery.
	m.recoveries.WithLabelValues("recovered")
	m.recoveries.WithLabelValues("not_recovered")
	if reg != nil {
		reg.MustRegister(m.publishes, m.publishErrors, m.retries, m.deliveries, m.duplicates, m.overflowDrops,
			m.reordered, m.outOfOrder, m.gaps, m.reconnects, m.ackTimeouts, m.refusals, m.badReplies, m.memberGaps, m.gapDrops, m.subQueueFull, m.stale, m.nodes, m.publishLatency,
			m.historyAppendErrors, m.historyFills, m.recoveries, m.asyncPendingBytes, m.asyncBlocked, m.historyReads, m.historySharedReads, m.downReports, m.downRemovals)
	}
	return m
}
