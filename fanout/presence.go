package fanout

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// Presence (docs/presence.md) is kept in the nodes, per channel on its
// home node (rendezvous over the ready nodes, as for publishes), in three
// keys:
//
//	pm:pm:<channel>  sorted set: client id scored by the entry's expiry (unix ms)
//	pm:pi:<channel>  hash: client id -> PresenceEntry JSON
//	pm:pu:<channel>  hash: token subject -> how many entries it has (the
//	                 distinct-subjects count is its HLEN)
//
// Every script prunes the expired members first (and returns them, for
// leave events), so the three keys always agree. Redis 7.0 has no per-field
// hash TTL; the score is the entry's TTL, refreshed by its gateway. The keys
// themselves expire two entry TTLs after their last write.
const (
	presenceMembersPrefix = "pm:pm:"
	presenceInfoPrefix    = "pm:pi:"
	presenceUsersPrefix   = "pm:pu:"
)

// MaxPresenceInfo is the largest client info a presence entry may carry.
const MaxPresenceInfo = 1024

// pruneBatch bounds the expired members one script removes: a crashed
// gateway's thousands of entries go over a few calls, not one long one.
const pruneBatch = 1000

func presenceKeys(channel string) []string {
	return []string{presenceMembersPrefix + channel, presenceInfoPrefix + channel, presenceUsersPrefix + channel}
}

// PresenceEntry is one client subscribed to a presence channel.
type PresenceEntry struct {
	// Client is the session's id, unique in the cluster.
	Client string `json:"client"`
	// User is the token subject; empty for anonymous clients (not counted
	// in PresenceStats.Users).
	User string `json:"user"`
	// Gateway is the id of the gateway the client is connected to.
	Gateway string `json:"gateway"`
	// Since is when the client connected.
	Since time.Time `json:"connected_at"`
	// Info is what the client supplied at connect (a JSON value of at most
	// MaxPresenceInfo bytes), or nil.
	Info json.RawMessage `json:"info,omitempty"`
}

// PresenceStats counts a channel's presence: entries, and distinct
// non-empty subjects among them.
type PresenceStats struct {
	Clients int `json:"clients"`
	Users   int `json:"users"`
}

// luaPrune is the shared head of every script: it removes up to
// pruneBatch members expired at ARGV[1] from all three keys and leaves
// them, as their JSON, in the local pruned.
const luaPrune = `
local m, i, u = KEYS[1], KEYS[2], KEYS[3]
local function subject(v)
  if not v then return '' end
  local ok, e = pcall(cjson.decode, v)
  if ok and type(e) == 'table' and type(e.user) == 'string' then return e.user end
  return ''
end
local function count(s, d)
  if s == '' then return end
  if redis.call('HINCRBY', u, s, d) <= 0 then redis.call('HDEL', u, s) end
end
local pruned = {}
local gone = redis.call('ZRANGEBYSCORE', m, '-inf', ARGV[1], 'LIMIT', 0, ` + "1000" + `)
for _, c in ipairs(gone) do
  local v = redis.call('HGET', i, c)
  if v then
    count(subject(v), -1)
    redis.call('HDEL', i, c)
    pruned[#pruned+1] = v
  end
  redis.call('ZREM', m, c)
end
`

// presenceAdd: ARGV now, expiry, client, user, json, key ttl (ms).
// Returns {1 if the client was not there, pruned}.
var presenceAdd = redis.NewScript(luaPrune + `
local new = 0
local old = redis.call('HGET', i, ARGV[3])
if old then
  local os = subject(old)
  if os ~= ARGV[4] then count(os, -1); count(ARGV[4], 1) end
else
  new = 1
  count(ARGV[4], 1)
end
redis.call('ZADD', m, ARGV[2], ARGV[3])
redis.call('HSET', i, ARGV[3], ARGV[5])
redis.call('PEXPIRE', m, ARGV[6])
redis.call('PEXPIRE', i, ARGV[6])
if redis.call('EXISTS', u) == 1 then redis.call('PEXPIRE', u, ARGV[6]) end
return {new, pruned}
`)

// presenceRemove: ARGV now, client. Returns {1 if it was there, pruned}.
var presenceRemove = redis.NewScript(luaPrune + `
local v = redis.call('HGET', i, ARGV[2])
local was = 0
if v then
  was = 1
  count(subject(v), -1)
  redis.call('HDEL', i, ARGV[2])
end
redis.call('ZREM', m, ARGV[2])
return {was, pruned}
`)

// presenceList: ARGV now. Returns {members with scores, HGETALL, pruned}.
var presenceList = redis.NewScript(luaPrune + `
return {redis.call('ZRANGE', m, 0, -1, 'WITHSCORES'), redis.call('HGETALL', i), pruned}
`)

// presenceCount: ARGV now. Returns {ZCARD, HLEN users, pruned}.
var presenceCount = redis.NewScript(luaPrune + `
return {redis.call('ZCARD', m), redis.call('HLEN', u), pruned}
`)

// presenceHome returns the channel's home among the ready nodes: the same
// node on every gateway that sees the same ready set (suspicion, which is
// local to a client, does not reorder it).
func (c *Client) presenceHome(channel string) (*nodeConn, error) {
	rs := c.ready.Load()
	if len(rs.conns) == 0 {
		return nil, ErrNoNodes
	}
	var buf [16]int
	order := rank(buf[:0], channelHash(channel), rs.seeds, nil)
	return rs.conns[order[0]], nil
}

// presenceNodes returns every node connection a channel's entries may be
// on: the ready nodes and the joining and draining ones (entries move to a
// new home only after the ready set changed).
func (c *Client) presenceNodes() []*nodeConn {
	out := c.conns()
	sort.Slice(out, func(i, j int) bool { return out[i].node.ID < out[j].node.ID })
	return out
}

func nowMS() int64 { return time.Now().UnixMilli() }

// decodePruned turns a script's pruned list into entries.
func decodePruned(v any) []PresenceEntry {
	list, _ := v.([]any)
	out := make([]PresenceEntry, 0, len(list))
	for _, x := range list {
		s, _ := x.(string)
		var e PresenceEntry
		if json.Unmarshal([]byte(s), &e) == nil {
			out = append(out, e)
		}
	}
	return out
}

// presenceAddOn writes e on nc with ttl, and says whether it is new there.
func (nc *nodeConn) presenceAddOn(ctx context.Context, channel string, e PresenceEntry, ttl time.Duration) (bool, []PresenceEntry, error) {
	data, err := json.Marshal(e)
	if err != nil {
		return false, nil, fmt.Errorf("fanout: presence entry: %w", err)
	}
	now := nowMS()
	res, err := presenceAdd.Run(ctx, nc.rdb, presenceKeys(channel),
		now, now+ttl.Milliseconds(), e.Client, e.User, data, (2 * ttl).Milliseconds()).Slice()
	if err != nil {
		return false, nil, fmt.Errorf("fanout: presence add on %s: %w", nc, err)
	}
	n, _ := res[0].(int64)
	return n == 1, decodePruned(res[1]), nil
}

// presenceRemoveOn deletes client's entry on nc, saying whether it was
// there.
func (nc *nodeConn) presenceRemoveOn(ctx context.Context, channel, client string) (bool, []PresenceEntry, error) {
	res, err := presenceRemove.Run(ctx, nc.rdb, presenceKeys(channel), nowMS(), client).Slice()
	if err != nil {
		return false, nil, fmt.Errorf("fanout: presence remove on %s: %w", nc, err)
	}
	n, _ := res[0].(int64)
	return n == 1, decodePruned(res[1]), nil
}

// presenceEntry is an entry as read from one node, with its expiry.
type presenceEntry struct {
	PresenceEntry
	expires int64
}

func (nc *nodeConn) presenceListOn(ctx context.Context, channel string) ([]presenceEntry, []PresenceEntry, error) {
	res, err := presenceList.Run(ctx, nc.rdb, presenceKeys(channel), nowMS()).Slice()
	if err != nil {
		return nil, nil, fmt.Errorf("fanout: presence list on %s: %w", nc, err)
	}
	zs, _ := res[0].([]any)
	hs, _ := res[1].([]any)
	info := make(map[string]string, len(hs)/2)
	for k := 0; k+1 < len(hs); k += 2 {
		f, _ := hs[k].(string)
		v, _ := hs[k+1].(string)
		info[f] = v
	}
	out := make([]presenceEntry, 0, len(zs)/2)
	for k := 0; k+1 < len(zs); k += 2 {
		id, _ := zs[k].(string)
		sc, _ := zs[k+1].(string)
		exp, _ := strconv.ParseFloat(sc, 64)
		var e presenceEntry
		if json.Unmarshal([]byte(info[id]), &e.PresenceEntry) != nil {
			e.PresenceEntry = PresenceEntry{Client: id}
		}
		e.Client, e.expires = id, int64(exp)
		out = append(out, e)
	}
	return out, decodePruned(res[2]), nil
}

func (nc *nodeConn) presenceCountOn(ctx context.Context, channel string) (PresenceStats, []PresenceEntry, error) {
	res, err := presenceCount.Run(ctx, nc.rdb, presenceKeys(channel), nowMS()).Slice()
	if err != nil {
		return PresenceStats{}, nil, fmt.Errorf("fanout: presence stats on %s: %w", nc, err)
	}
	cl, _ := res[0].(int64)
	us, _ := res[1].(int64)
	return PresenceStats{Clients: int(cl), Users: int(us)}, decodePruned(res[2]), nil
}

// eachPresenceNode runs fn on every node an entry may be on, at once, and
// returns the first error (a node that does not answer makes the read
// incomplete: better an error than a silently short list).
func (c *Client) eachPresenceNode(ctx context.Context, fn func(nc *nodeConn) error) error {
	if c.isClosed() {
		return ErrClosed
	}
	conns := c.presenceNodes()
	if len(conns) == 0 {
		return ErrNoNodes
	}
	var wg sync.WaitGroup
	errs := make([]error, len(conns))
	for k, nc := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[k] = fn(nc)
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}
