package clusterconfig

import (
	"fmt"
	"time"
)

// Bounds of the values a document may hold. They keep a typo (a missing
// unit, an extra zero) from taking a cluster down.
const (
	MaxHistorySize     = 1_000_000
	MaxHistoryTTL      = 30 * 24 * time.Hour
	MinMaxPublishBytes = 1
	MaxMaxPublishBytes = 16 << 20
	MaxSendQueue       = 1 << 16
	MinMaxFrameBytes   = 256
	MaxMaxFrameBytes   = 16 << 20
	MinPingInterval    = time.Second
	MaxPingInterval    = 10 * time.Minute
	MaxNamespaces      = 1000
)

func (d *Document) validate(probs *[]Problem) {
	add := func(path string, v any, format string, args ...any) {
		*probs = append(*probs, Problem{Path: path, Value: v, Reason: fmt.Sprintf(format, args...)})
	}
	intRange := func(path string, v, lo, hi int) {
		if v < lo || v > hi {
			add(path, v, "must be between %d and %d", lo, hi)
		}
	}
	if len(d.Namespaces) > MaxNamespaces {
		add("namespaces", nil, "at most %d rules", MaxNamespaces)
	}
	for i := range d.Namespaces {
		ns := &d.Namespaces[i]
		p := fmt.Sprintf("namespaces[%d]", i)
		if ns.Match == "" {
			add(p+".match", nil, "is required: a glob such as \"chat.*\" or \"rooms.**\"")
		} else if m, err := compileGlob(ns.Match); err != nil {
			add(p+".match", ns.Match, "%v", err)
		} else {
			ns.re = m
		}
		intRange(p+".history_size", ns.HistorySize, 0, MaxHistorySize)
		if ttl := time.Duration(ns.HistoryTTL); ttl <= 0 || ttl > MaxHistoryTTL {
			add(p+".history_ttl", ns.HistoryTTL.String(), "must be more than 0 and at most %s", MaxHistoryTTL)
		}
		for _, a := range []struct {
			key string
			v   Access
		}{{"allow_subscribe", ns.AllowSubscribe}, {"allow_publish", ns.AllowPublish}} {
			if a.v != AccessToken && a.v != AccessAnonymous && a.v != AccessNone {
				add(p+"."+a.key, string(a.v), "must be token, anonymous or none")
			}
		}
		intRange(p+".max_publish_bytes", ns.MaxPublishBytes, MinMaxPublishBytes, MaxMaxPublishBytes)
		// Join and leave events are derived from presence entries (a
		// crashed gateway's clients leave when their entries expire), so
		// they need them.
		if ns.JoinLeave && !ns.Presence {
			add(p+".join_leave", true, "needs presence: true (join and leave events come from presence entries)")
		}
	}
	g := d.Gateway
	if g.PublishRate < 0 || g.PublishRate > 1e6 {
		add("gateway.publish_rate", g.PublishRate, "must be between 0 (no limit) and 1000000")
	}
	intRange("gateway.publish_burst", g.PublishBurst, 1, 1_000_000)
	intRange("gateway.max_subscriptions", g.MaxSubscriptions, 0, 1_000_000)
	intRange("gateway.max_connections_per_subject", g.MaxConnectionsPerSubject, 0, 1_000_000)
	intRange("gateway.send_queue", g.SendQueue, 1, MaxSendQueue)
	intRange("gateway.max_frame_bytes", g.MaxFrameBytes, MinMaxFrameBytes, MaxMaxFrameBytes)
	if pi := time.Duration(g.PingInterval); pi < MinPingInterval || pi > MaxPingInterval {
		add("gateway.ping_interval", g.PingInterval.String(), "must be between %s and %s", MinPingInterval, MaxPingInterval)
	}
	n := d.Node
	if n.OutputBufferLimit.Hard != 0 && n.OutputBufferLimit.Soft > n.OutputBufferLimit.Hard {
		add("node.output_buffer_limit", n.OutputBufferLimit.String(), "the soft limit must not exceed the hard limit (0 hard: no hard limit)")
	}
	if n.MaxMemory != 0 && n.MaxMemory < 1<<20 {
		add("node.maxmemory", int64(n.MaxMemory), "must be 0 (no limit) or at least 1mb")
	}
}
