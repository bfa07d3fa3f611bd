package discovery

import (
	"fmt"
	"strconv"
	"strings"
)

// Key layout, all under Prefix (default "/pubmesh"):
//
//	<prefix>/<cluster>/nodes/<node-id>            Node JSON, under the agent's lease
//	<prefix>/<cluster>/drain/<node-id>            drain request, under a 10 min lease
//	<prefix>/<cluster>/clients/<client-id>        ClientInfo JSON, under the client's lease
//	<prefix>/<cluster>/gateways/<gateway-id>      GatewayInfo JSON, under the gateway's lease
//	<prefix>/<cluster>/acks/<node-id>/<client-id> Ack JSON, under the client's lease;
//	                                              ClearAcks deletes a node's acks once it left
//	<prefix>/<cluster>/down/<node-id>/<incarnation>/<client-id>
//	                                              DownReport JSON, under the client's lease: the
//	                                              client's connections to the node are refused
//	                                              (down.go); DownQuorum of them remove the node
//	<prefix>/<cluster>/config                     cluster configuration (clusterconfig), JSON as written
//	<prefix>/<cluster>/config-history/<nanos>     ConfigRevision JSON, one per write by PutConfig,
//	                                              the newest MaxConfigHistory kept; its key's
//	                                              CreateRevision is the config revision it wrote
//	<prefix>/<cluster>/history-runs/<run-id>      HistoryRun JSON, one per Redis run of a node
//	                                              (no lease): written when the run registers,
//	                                              ended once; PruneRuns deletes old ended ones
//
// A node that is gone has no key under nodes/.

// DefaultPrefix is the root of every pubmesh key in etcd.
const DefaultPrefix = "/pubmesh"

// ValidID reports whether id can name a node, a client or a cluster: 1 to 128
// characters of letters, digits, '.', '_', ':' and '-', not starting with a
// punctuation mark. Slashes are refused because they would change the key
// layout.
func ValidID(id string) error {
	if !validID(id) {
		return fmt.Errorf("discovery: invalid id %q: want 1-128 of [A-Za-z0-9._:-], starting with a letter or digit", id)
	}
	return nil
}

// validID is ^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$, by hand: that regexp
// compiles to 118 KB at every process start (2 ms of pubmesh's start).
func validID(id string) bool {
	if len(id) == 0 || len(id) > 128 {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		alnum := 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9'
		if !alnum && (i == 0 || c != '.' && c != '_' && c != ':' && c != '-') {
			return false
		}
	}
	return true
}

type keys struct{ root string } // root is "<prefix>/<cluster>/"

func newKeys(prefix, cluster string) keys {
	return keys{root: strings.TrimSuffix(prefix, "/") + "/" + cluster + "/"}
}

func (k keys) nodes() string               { return k.root + "nodes/" }
func (k keys) node(id string) string       { return k.nodes() + id }
func (k keys) drains() string              { return k.root + "drain/" }
func (k keys) drain(id string) string      { return k.drains() + id }
func (k keys) clients() string             { return k.root + "clients/" }
func (k keys) client(id string) string     { return k.clients() + id }
func (k keys) config() string              { return k.root + "config" }
func (k keys) configHistory() string       { return k.root + "config-history/" }
func (k keys) historyRuns() string         { return k.root + "history-runs/" }
func (k keys) historyRun(id string) string { return k.historyRuns() + id }
func (k keys) acks(node string) string     { return k.root + "acks/" + node + "/" }
func (k keys) ack(node, cl string) string  { return k.acks(node) + cl }
func (k keys) downs(node string, inc int64) string {
	return k.root + "down/" + node + "/" + strconv.FormatInt(inc, 10) + "/"
}
func (k keys) down(node string, inc int64, cl string) string { return k.downs(node, inc) + cl }
