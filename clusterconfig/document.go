package clusterconfig

import (
	"encoding/json"
	"fmt"
	"time"
)

// Document is a parsed, validated and defaulted cluster configuration.
// Build one with Parse or Defaults; the zero value is not valid.
type Document struct {
	// Namespaces are the channel rules, in order: a channel takes the
	// options of the first rule whose Match matches it, or DefaultNamespace.
	Namespaces []Namespace `json:"namespaces"`
	Gateway    Gateway     `json:"gateway"`
	Node       Node        `json:"node"`
}

// Access says which clients of a gateway may subscribe or publish on a
// namespace's channels. Services using the fanout client directly are not
// clients: they are always allowed.
type Access string

const (
	// AccessToken: as the client's credential says (a JWT's sub and pub
	// claims; an API key and an insecure gateway allow everything).
	AccessToken Access = "token"
	// AccessAnonymous: every client, whatever its credential says, and on a
	// gateway with authentication also a client without any credential.
	AccessAnonymous Access = "anonymous"
	// AccessNone: no client; only services publish and subscribe.
	AccessNone Access = "none"
)

// Namespace is one channel rule and the options of the channels it matches.
type Namespace struct {
	// Match is a glob over channel names: segments are separated by '.',
	// '*' matches any run of characters within one segment, a segment "**"
	// matches one or more whole segments, anything else matches itself.
	// "chat.*" matches "chat.lobby" but not "chat.a.b"; "rooms.**" matches
	// both "rooms.a" and "rooms.a.b", not "rooms". Required.
	Match string `json:"match"`
	// HistorySize is how many messages each channel keeps for recovery.
	// Default: 0, no history.
	HistorySize int `json:"history_size"`
	// HistoryTTL is how long a kept message stays. Default: 1h.
	HistoryTTL Duration `json:"history_ttl"`
	// Presence: the gateways keep, in the nodes, who is subscribed to each
	// channel (docs/presence.md). Default: false.
	Presence bool `json:"presence"`
	// JoinLeave: subscribers get join and leave events. It needs Presence.
	// Default: false.
	JoinLeave bool `json:"join_leave"`
	// AllowSubscribe: which clients may subscribe. Default: token.
	AllowSubscribe Access `json:"allow_subscribe"`
	// AllowPublish: which clients may publish. Default: token.
	AllowPublish Access `json:"allow_publish"`
	// MaxPublishBytes is the largest message data a client may publish.
	// Default: 32 KiB.
	MaxPublishBytes int `json:"max_publish_bytes"`

	re matcher
}

// Gateway holds the limits every WebSocket gateway applies.
type Gateway struct {
	// PublishRate is publishes per second per token subject (per
	// connection for API keys). 0: no limit. Default: 20.
	PublishRate float64 `json:"publish_rate"`
	// PublishBurst is how many publishes may come at once above the rate.
	// Default: 40.
	PublishBurst int `json:"publish_burst"`
	// MaxSubscriptions per connection. 0: no limit. Default: 100.
	MaxSubscriptions int `json:"max_subscriptions"`
	// MaxConnectionsPerSubject is how many connections one token subject
	// may hold open. 0: no limit. Default: 100.
	MaxConnectionsPerSubject int `json:"max_connections_per_subject"`
	// SendQueue is how many frames may wait for one connection's writer.
	// Default: 256.
	SendQueue int `json:"send_queue"`
	// MaxFrameBytes is the largest frame a client may send. Default: 64 KiB.
	MaxFrameBytes int `json:"max_frame_bytes"`
	// PingInterval is how often idle clients are pinged. Default: 25s.
	PingInterval Duration `json:"ping_interval"`
}

// Node holds what every node agent applies to its Redis.
type Node struct {
	// OutputBufferLimit is Redis's client-output-buffer-limit for pub/sub
	// clients. Default: "64mb 16mb 60".
	OutputBufferLimit BufferLimit `json:"output_buffer_limit"`
	// MaxMemory is Redis's maxmemory in bytes; a number or a size such as
	// "512mb". 0: no limit. Default: 0.
	MaxMemory ByteSize `json:"maxmemory"`
}

// Defaults of every key.
var (
	DefaultNamespace = Namespace{
		Match:           "**",
		HistoryTTL:      Duration(time.Hour),
		AllowSubscribe:  AccessToken,
		AllowPublish:    AccessToken,
		MaxPublishBytes: 32 << 10,
	}
	DefaultGateway = Gateway{
		PublishRate:              20,
		PublishBurst:             40,
		MaxSubscriptions:         100,
		MaxConnectionsPerSubject: 100,
		SendQueue:                256,
		MaxFrameBytes:            64 << 10,
		PingInterval:             Duration(25 * time.Second),
	}
	DefaultNode = Node{
		OutputBufferLimit: BufferLimit{Hard: 64 << 20, Soft: 16 << 20, SoftFor: 60 * time.Second},
	}
)

// Defaults returns the document in force when etcd holds none: no
// namespace rule and every limit at its default.
func Defaults() *Document {
	return &Document{Namespaces: []Namespace{}, Gateway: DefaultGateway, Node: DefaultNode}
}

// For returns the options of channel: those of the first namespace that
// matches it, or DefaultNamespace.
func (d *Document) For(channel string) Namespace {
	for _, ns := range d.Namespaces {
		if ns.Matches(channel) {
			return ns
		}
	}
	return DefaultNamespace
}

// Matches reports whether channel is one of the namespace's channels.
func (ns Namespace) Matches(channel string) bool {
	if ns.re.re == nil { // built without Parse
		m, err := compileGlob(ns.Match)
		return err == nil && m.match(channel)
	}
	return ns.re.match(channel)
}

// JSON returns the complete document, defaults included, as indented JSON.
func (d *Document) JSON() []byte {
	b, err := json.MarshalIndent(d, "", "  ")
	if err != nil { // every field marshals
		panic(fmt.Sprintf("clusterconfig: marshal: %v", err))
	}
	return b
}
