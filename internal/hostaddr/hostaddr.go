// Package hostaddr picks the address a server bound to every address
// (0.0.0.0 or ::) should announce to other machines: a node agent's
// registered address (broker) and a gateway's registered URL (ws). It
// never picks a loopback address, which other machines cannot dial.
package hostaddr

import (
	"net"
	"os"
)

// Reachable is the host a server bound to every address (0.0.0.0 or ::)
// should tell others to dial: an address the other machines can reach. The host name is used when it resolves to an address of one of
// this machine's interfaces other than loopback; many machines resolve
// their own name to 127.0.0.1 or 127.0.1.1 (Debian's /etc/hosts), which
// would send every other machine's clients to themselves. Otherwise it is
// the first global unicast address of an interface that is up, IPv4
// first. It returns "" when there is none: the server then needs an address
// given by hand.
func Reachable(hostname string, lookup func(string) ([]net.IP, error), local []net.IP) string {
	isLocal := func(ip net.IP) bool {
		for _, l := range local {
			if l.Equal(ip) {
				return true
			}
		}
		return false
	}
	if hostname != "" {
		if ips, err := lookup(hostname); err == nil {
			for _, ip := range ips {
				if !ip.IsLoopback() && isLocal(ip) {
					return hostname
				}
			}
		}
	}
	var v6 string
	for _, ip := range local {
		if !ip.IsGlobalUnicast() {
			continue
		}
		if ip.To4() != nil {
			return ip.String()
		}
		if v6 == "" {
			v6 = ip.String()
		}
	}
	return v6
}

// LocalIPs are the addresses of this machine's interfaces that are up.
func LocalIPs() []net.IP {
	ifs, err := net.Interfaces()
	if err != nil {
		return nil
	}
	var out []net.IP
	for _, i := range ifs {
		if i.Flags&net.FlagUp == 0 {
			continue
		}
		addrs, err := i.Addrs()
		if err != nil {
			continue
		}
		for _, a := range addrs {
			if n, ok := a.(*net.IPNet); ok {
				out = append(out, n.IP)
			}
		}
	}
	return out
}

// Default is Reachable for this machine: its host name, the system's
// resolver and its interfaces.
func Default() string {
	h, _ := os.Hostname()
	return Reachable(h, net.LookupIP, LocalIPs())
}

// Unspecified reports whether host is 0.0.0.0, :: or empty (every address).
func Unspecified(host string) bool {
	if host == "" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsUnspecified()
}
