package netns

import (
	"fmt"
	"os"
	"path/filepath"
)

// Network is the range every namespace's /30 comes from. Namespaces made
// by NewHost route all of it through the host, so they reach each other.
const Network = "10.213.0.0/16"

// NewHost makes a namespace like New that also reaches every other NewHost
// namespace, as machines on one private network do: inside, Network is
// routed to the host end of the pair, and the host forwards what arrives on
// that end (net.ipv4.conf.<HostIf>.forwarding, set on this interface only:
// the host's global net.ipv4.ip_forward and its other interfaces are left
// as they are, and the setting goes with the interface). Namespaces made
// by New have no such route, so they stay reachable from the host only.
//
// LinkDown cuts such a namespace off from every other one at once; LinkUp
// restores its route.
func NewHost() (*NS, error) {
	ns, err := New()
	if err != nil {
		return nil, err
	}
	fwd := filepath.Join("/proc/sys/net/ipv4/conf", ns.HostIf, "forwarding")
	if err := os.WriteFile(fwd, []byte("1"), 0o644); err != nil {
		ns.Close()
		return nil, fmt.Errorf("netns: forwarding on %s: %w", ns.HostIf, err)
	}
	ns.routed = true
	if err := ns.route(); err != nil {
		ns.Close()
		return nil, err
	}
	return ns, nil
}

// route sets the route to Network through the host end ("replace": it may
// still be there).
func (ns *NS) route() error {
	return ip("-n", ns.Name, "route", "replace", Network, "via", ns.HostIP)
}
