// Package netns makes Linux network namespaces joined to the host by a veth
// pair, so a test can put a server behind a link it can cut. It drives the
// `ip` command (iproute2) and needs CAP_NET_ADMIN (root); Available says
// why not where it cannot work.
//
// Every namespace gets a private /30 from 10.213.0.0/16: the host end of
// the veth pair is .1, the namespace end .2. These addresses exist only on
// the pair, never on another interface. Close deletes the namespace and the
// pair with it; namespaces left by a test process that died are deleted by
// the next New.
//
// A NS is safe for concurrent use.
package netns

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
)

// prefix starts the name of every namespace this package makes:
// pmns-<pid>-<n>, so leftovers of dead processes can be found.
const prefix = "pmns-"

// NS is one namespace with its veth pair.
type NS struct {
	// Name of the namespace (ip netns).
	Name string
	// HostIf and PeerIf are the veth ends, in the root namespace and in
	// this one.
	HostIf, PeerIf string
	// HostIP and IP are the addresses of the ends: .1 and .2 of the /30.
	HostIP, IP string

	// routed: made by NewHost; LinkUp puts the route to Network back (the
	// kernel deletes a route through a link that goes down).
	routed bool

	mu     sync.Mutex // guards closed
	closed bool
}

var (
	seqMu sync.Mutex
	seq   int
)

// Available returns nil if namespaces can be made here, or why not.
func Available() error {
	if _, err := exec.LookPath("ip"); err != nil {
		return errors.New("netns: the ip command (iproute2) is not installed")
	}
	if os.Geteuid() != 0 {
		return errors.New("netns: not root (network namespaces need CAP_NET_ADMIN)")
	}
	name := fmt.Sprintf("%s%d-probe", prefix, os.Getpid())
	if err := ip("netns", "add", name); err != nil {
		return fmt.Errorf("netns: cannot make a namespace: %w", err)
	}
	return ip("netns", "del", name)
}

// New makes a namespace with a veth pair to the host, both ends up, and
// loopback up inside.
func New() (*NS, error) {
	cleanStale()
	seqMu.Lock()
	seq++
	n := seq
	seqMu.Unlock()
	pid := os.Getpid()
	subnet, err := freeSubnet()
	if err != nil {
		return nil, err
	}
	ns := &NS{
		Name:   fmt.Sprintf("%s%d-%d", prefix, pid, n),
		HostIf: fmt.Sprintf("pm%dh%d", pid%1000000, n), // interface names: at most 15 bytes
		PeerIf: fmt.Sprintf("pm%dn%d", pid%1000000, n),
		HostIP: fmt.Sprintf("10.213.%d.%d", subnet/64, (subnet%64)*4+1),
		IP:     fmt.Sprintf("10.213.%d.%d", subnet/64, (subnet%64)*4+2),
	}
	steps := [][]string{
		{"netns", "add", ns.Name},
		{"link", "add", ns.HostIf, "type", "veth", "peer", "name", ns.PeerIf},
		{"link", "set", ns.PeerIf, "netns", ns.Name},
		{"addr", "add", ns.HostIP + "/30", "dev", ns.HostIf},
		{"link", "set", ns.HostIf, "up"},
		{"-n", ns.Name, "addr", "add", ns.IP + "/30", "dev", ns.PeerIf},
		{"-n", ns.Name, "link", "set", ns.PeerIf, "up"},
		{"-n", ns.Name, "link", "set", "lo", "up"},
	}
	for _, s := range steps {
		if err := ip(s...); err != nil {
			ns.Close()
			return nil, err
		}
	}
	return ns, nil
}

// Command is exec.Command for name and args run inside the namespace.
func (ns *NS) Command(name string, args ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", ns.Name, name}, args...)...)
}

// LinkDown takes the namespace's end of the pair down: the host end loses
// its carrier and packets between the two sides vanish (connections hang,
// as across a cut cable; nothing is refused).
func (ns *NS) LinkDown() error { return ip("-n", ns.Name, "link", "set", ns.PeerIf, "down") }

// LinkUp brings the namespace's end back up, and for a NewHost namespace
// its route to the others.
func (ns *NS) LinkUp() error {
	if err := ip("-n", ns.Name, "link", "set", ns.PeerIf, "up"); err != nil {
		return err
	}
	if !ns.routed {
		return nil
	}
	return ns.route()
}

// PIDs lists the processes running in the namespace.
func (ns *NS) PIDs() []int {
	out, _ := exec.Command("ip", "netns", "pids", ns.Name).Output()
	var pids []int
	for _, f := range strings.Fields(string(out)) {
		if p, err := strconv.Atoi(f); err == nil {
			pids = append(pids, p)
		}
	}
	return pids
}

// Close kills what still runs in the namespace and deletes it, and the
// veth pair with it. It is safe to call more than once.
func (ns *NS) Close() error {
	ns.mu.Lock()
	defer ns.mu.Unlock()
	if ns.closed {
		return nil
	}
	ns.closed = true
	for _, p := range ns.PIDs() {
		syscall.Kill(p, syscall.SIGKILL)
	}
	err := ip("netns", "del", ns.Name)
	// The host end goes with its peer, but the kernel destroys the pair
	// asynchronously: it may vanish between a check and a delete, so only a
	// host end that is still there after a failed delete is an error.
	if ip("link", "show", ns.HostIf) == nil {
		if derr := ip("link", "del", ns.HostIf); derr != nil && ip("link", "show", ns.HostIf) == nil {
			err = errors.Join(err, derr)
		}
	}
	return err
}

// freeSubnet picks a /30 of 10.213.0.0/16 (index 0-16383) that no
// interface uses.
func freeSubnet() (int, error) {
	out, err := exec.Command("ip", "-o", "-4", "addr", "show").Output()
	if err != nil {
		return 0, fmt.Errorf("netns: ip addr: %w", err)
	}
	used := string(out)
	start := (os.Getpid() * 7) % 16384
	for i := range 16384 {
		s := (start + i) % 16384
		if s%64 == 0 { // skip the /30 holding the /24's network address, for clarity
			continue
		}
		host := fmt.Sprintf(" 10.213.%d.%d/", s/64, (s%64)*4+1)
		if !strings.Contains(used, host) {
			seqMu.Lock()
			taken := taken[s]
			if !taken {
				markTaken(s)
			}
			seqMu.Unlock()
			if !taken {
				return s, nil
			}
		}
	}
	return 0, errors.New("netns: no free /30 in 10.213.0.0/16")
}

// taken holds subnets handed out by this process (guarded by seqMu), so two
// concurrent New calls never pick the same one before either has an address.
var taken = map[int]bool{}

func markTaken(s int) { taken[s] = true }

// cleanStale deletes namespaces of this package whose process is gone.
func cleanStale() {
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		return
	}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || !strings.HasPrefix(f[0], prefix) {
			continue
		}
		rest := strings.TrimPrefix(f[0], prefix)
		pidS, _, _ := strings.Cut(rest, "-")
		pid, err := strconv.Atoi(pidS)
		if err != nil || pid == os.Getpid() {
			continue
		}
		if syscall.Kill(pid, 0) == syscall.ESRCH {
			stale := &NS{Name: f[0]}
			for _, p := range stale.PIDs() {
				syscall.Kill(p, syscall.SIGKILL)
			}
			ip("netns", "del", f[0])
		}
	}
}

func ip(args ...string) error {
	cmd := exec.Command("ip", args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("netns: ip %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return nil
}
