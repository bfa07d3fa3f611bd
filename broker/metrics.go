package broker

import (
	"fmt"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pubmesh/pubmesh/discovery"
)

// Metric names; docs/operations.md describes each. The CLI adds a "node"
// label through prometheus.WrapRegistererWith.
const (
	metricState          = "pubmesh_node_state"
	metricRedisUp        = "pubmesh_node_redis_up"
	metricPing           = "pubmesh_node_ping_seconds"
	metricPingFailures   = "pubmesh_node_ping_failures_total"
	metricClients        = "pubmesh_node_redis_connected_clients"
	metricPubsubChannels = "pubmesh_node_redis_pubsub_channels"
	metricPubsubPatterns = "pubmesh_node_redis_pubsub_patterns"
	metricRestarts       = "pubmesh_node_redis_restarts_total"
	metricLeaves         = "pubmesh_node_leaves_total"
	metricRegisterErrors = "pubmesh_node_register_errors_total"
	metricConfigApply    = "pubmesh_node_config_apply_errors_total"

	metricHistoryEvicted  = "pubmesh_node_history_evicted_keys_total"
	metricHistoryKeys     = "pubmesh_node_history_keys"
	metricHandoffStreams  = "pubmesh_node_history_handoff_streams_total"
	metricHandoffEntries  = "pubmesh_node_history_handoff_entries_total"
	metricHandoffErrors   = "pubmesh_node_history_handoff_errors_total"
	metricHistoryRunError = "pubmesh_node_history_run_errors_total"

	// The cluster configuration metrics have the names and help of the
	// fanout client's, so that a process running both (pubmesh dev) exports
	// one family of each; see configCollector.
	metricConfigRevision = "pubmesh_config_revision"
	helpConfigRevision   = "Revision of the cluster configuration this process runs (0: none in etcd, the defaults)."
	metricConfigInvalid  = "pubmesh_config_invalid_total"
	helpConfigInvalid    = "Cluster configuration revisions ignored because they did not parse or validate (the last good one stays in force)."
)

// StateGone is the value of the state metric while the node has no key in
// the registry (starting, unhealthy, or stopped).
const StateGone = "gone"

// metricStates are the values of the state label, one-hot.
var metricStates = []string{StateGone, "joining", "ready", "draining"}

// Reasons a node leaves, the values of the leaves metric's reason label.
const (
	leaveHealth     = "health"      // PING missed HealthFailures times in a row
	leaveExit       = "exit"        // the redis-server child exited
	leaveLeaseLost  = "lease_lost"  // the lease expired, e.g. etcd unreachable for longer than the TTL
	leaveKeyDeleted = "key_deleted" // the key was deleted by hand (etcdctl del) while the lease lived
	leaveGate       = "join_gate"   // the JoinGate returned an error
	leaveEtcd       = "etcd"        // a state write to etcd failed
	leaveDrain      = "drain"       // drained (RequestDrain or Shutdown)
	leaveStop       = "stop"        // Run's context was cancelled
)

var leaveReasons = []string{leaveHealth, leaveExit, leaveLeaseLost, leaveKeyDeleted, leaveGate, leaveEtcd, leaveDrain, leaveStop}

// metrics of one agent. Prometheus types are safe for concurrent use.
type metrics struct {
	state          *prometheus.GaugeVec
	redisUp        prometheus.Gauge
	ping           prometheus.Histogram
	pingFailures   prometheus.Counter
	clients        prometheus.Gauge
	pubsubChannels prometheus.Gauge
	pubsubPatterns prometheus.Gauge
	restarts       prometheus.Counter
	leaves         *prometheus.CounterVec
	registerErrors prometheus.Counter
	configApply    prometheus.Counter

	historyEvicted prometheus.Counter
	historyKeys    prometheus.Gauge
	handoffStreams prometheus.Counter
	handoffEntries prometheus.Counter
	handoffErrors  prometheus.Counter
	runErrors      prometheus.Counter

	// configRevision is the revision applied to the Redis; configWatcher
	// is nil until the configuration was first read.
	configRevision atomic.Int64
	configWatcher  atomic.Pointer[discovery.ConfigWatcher]
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		state: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: metricState,
			Help: "Registry state of the node, one-hot: 1 for the current state (gone, joining, ready, draining), 0 for the others.",
		}, []string{"state"}),
		redisUp: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: metricRedisUp,
			Help: "1 if the node's Redis answered the last PING, else 0.",
		}),
		ping: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    metricPing,
			Help:    "Round-trip time of the health PINGs that succeeded.",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1},
		}),
		pingFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: metricPingFailures,
			Help: "Health PINGs that failed or timed out.",
		}),
		clients: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: metricClients,
			Help: "connected_clients from the node's Redis INFO.",
		}),
		pubsubChannels: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: metricPubsubChannels,
			Help: "pubsub_channels from the node's Redis INFO: channels with at least one subscriber.",
		}),
		pubsubPatterns: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: metricPubsubPatterns,
			Help: "pubsub_patterns from the node's Redis INFO: subscribed patterns.",
		}),
		restarts: prometheus.NewCounter(prometheus.CounterOpts{
			Name: metricRestarts,
			Help: "Times the agent restarted its redis-server child after it exited.",
		}),
		registerErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: metricRegisterErrors,
			Help: "Registrations that failed and are retried: etcd unreachable, the id held by another agent, INFO that does not look like Redis, or a failed join gate.",
		}),
		configApply: prometheus.NewCounter(prometheus.CounterOpts{
			Name: metricConfigApply,
			Help: "Attempts to apply the cluster configuration's node limits to the Redis (CONFIG SET) that failed; each is retried, with a backoff, until it works.",
		}),
		historyEvicted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: metricHistoryEvicted,
			Help: "Keys (history streams) the node's Redis evicted because it reached maxmemory (INFO evicted_keys); a recovery that needed one says recovered:false.",
		}),
		historyKeys: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: metricHistoryKeys,
			Help: "Keys in the node's Redis (INFO keyspace, db0): its history streams and adopted-stream sets.",
		}),
		handoffStreams: prometheus.NewCounter(prometheus.CounterOpts{
			Name: metricHandoffStreams,
			Help: "History streams a drain copied to another ready node.",
		}),
		handoffEntries: prometheus.NewCounter(prometheus.CounterOpts{
			Name: metricHandoffEntries,
			Help: "History entries a drain copied to other ready nodes.",
		}),
		handoffErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: metricHandoffErrors,
			Help: "History streams a drain could not copy (an error, the drain timeout, or no other ready node); the run then ends without hand-off.",
		}),
		runErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: metricHistoryRunError,
			Help: "Writes of the node's history-run records to etcd that failed (each is retried).",
		}),
		leaves: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: metricLeaves,
			Help: "Times the node left the registry (its key was deleted), by reason.",
		}, []string{"reason"}),
	}
	for _, c := range []prometheus.Collector{
		m.state, m.redisUp, m.ping, m.pingFailures, m.clients,
		m.pubsubChannels, m.pubsubPatterns, m.restarts, m.leaves, m.registerErrors,
		m.configApply, configCollector{m},
		m.historyEvicted, m.historyKeys, m.handoffStreams, m.handoffEntries, m.handoffErrors, m.runErrors,
	} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("broker: register metrics: %w", err)
		}
	}
	for _, r := range leaveReasons {
		m.leaves.WithLabelValues(r) // export zeros, so rate() works from the start
	}
	m.setState(StateGone)
	return m, nil
}

// setState makes state the one state set to 1.
func (m *metrics) setState(state string) {
	for _, s := range metricStates {
		v := 0.0
		if s == state {
			v = 1
		}
		m.state.WithLabelValues(s).Set(v)
	}
}

var (
	descConfigRevision = prometheus.NewDesc(metricConfigRevision, helpConfigRevision, nil, nil)
	descConfigInvalid  = prometheus.NewDesc(metricConfigInvalid, helpConfigInvalid, nil, nil)
)

// configCollector exports pubmesh_config_revision (the revision applied to
// the Redis) and pubmesh_config_invalid_total. It is an unchecked
// collector (Describe sends nothing): the fanout client registers the same
// names without labels, while an agent's Registerer adds a node label, and
// a registry refuses to register one name with two label sets. Unchecked,
// the two meet only when gathered, which allows it (same help and type),
// so pubmesh dev serves the gateway's and every node's in one family.
type configCollector struct{ m *metrics }

func (configCollector) Describe(chan<- *prometheus.Desc) {}

func (c configCollector) Collect(ch chan<- prometheus.Metric) {
	ch <- prometheus.MustNewConstMetric(descConfigRevision, prometheus.GaugeValue, float64(c.m.configRevision.Load()))
	bad := 0.0
	if w := c.m.configWatcher.Load(); w != nil {
		bad = float64(w.BadRevisions())
	}
	ch <- prometheus.MustNewConstMetric(descConfigInvalid, prometheus.CounterValue, bad)
}
