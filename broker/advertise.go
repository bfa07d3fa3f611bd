package broker

import (
	"net"
)

// advertiseHost is the host a node bound to every address (0.0.0.0 or ::)
// registers when no Advertise is given: an address the other machines can
// dial. The host name is used when it resolves to an address of one of
// this machine's interfaces other than loopback; many machines resolve
// their own name to 127.0.0.1 or 127.0.1.1 (Debian's /etc/hosts), which
// would send every other machine's clients to themselves. Otherwise it is
// the first global unicast address of an interface that is up, IPv4
// first. It returns "" when there is none: the node then needs Advertise.
func advertiseHost(hostname string, lookup func(string) ([]net.IP, error), local []net.IP) string {
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

// localIPs are the addresses of this machine's interfaces that are up.
func localIPs() []net.IP {
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

// lookupIP resolves a host name with the system's resolver.
func lookupIP(host string) ([]net.IP, error) { return net.LookupIP(host) }
