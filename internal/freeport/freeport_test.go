package freeport

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
)

func TestGetIsBindableAndBelowEphemeralRange(t *testing.T) {
	low := ephemeralLow()
	for range 50 {
		p, err := Get()
		if err != nil {
			t.Fatal(err)
		}
		if low-lowest >= 1000 && (p < lowest || p >= low) {
			t.Fatalf("port %d outside [%d, %d): it may be taken by an outgoing connection", p, lowest, low)
		}
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
		if err != nil {
			t.Fatalf("port %d from Get cannot be bound: %v", p, err)
		}
		if Free(l.Addr().String()) {
			t.Fatalf("Free(%s) is true while it is bound", l.Addr())
		}
		l.Close()
	}
}

// GetN's ports are consecutive and free, and Get does not hand one of them
// out again (a program numbering its ports from the base would collide).
func TestGetNReservesTheBlock(t *testing.T) {
	for range 20 {
		base, err := GetN(4)
		if err != nil {
			t.Fatal(err)
		}
		for i := range 4 {
			if !Free(net.JoinHostPort("127.0.0.1", strconv.Itoa(base+i))) {
				t.Fatalf("port %d of the block at %d is not free", base+i, base)
			}
		}
		for range 10 {
			p, err := Get()
			if err != nil {
				t.Fatal(err)
			}
			if p >= base && p < base+4 {
				t.Fatalf("Get returned %d, inside the block %d-%d from GetN", p, base, base+3)
			}
		}
	}
}

// A port handed out in one process is not handed out in another while the
// first lives (go test runs packages as parallel processes), and it is
// free to take again once that process has gone, however it ended.
func TestReservedAcrossProcesses(t *testing.T) {
	if os.Getenv("FREEPORT_CHILD") == "1" {
		base, err := GetN(3)
		if err != nil {
			fmt.Println("error", err)
			os.Exit(1)
		}
		fmt.Println(base)
		io.Copy(io.Discard, os.Stdin) // hold the ports until the parent closes stdin
		os.Exit(0)
	}
	if lockFile() == nil {
		t.Skip("no lock file in the temp directory")
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestReservedAcrossProcesses$")
	cmd.Env = append(os.Environ(), "FREEPORT_CHILD=1")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stdin.Close(); cmd.Process.Kill(); cmd.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	base, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil {
		t.Fatalf("child said %q", line)
	}
	for i := range 3 {
		if reserve(base+i, 1) {
			t.Fatalf("port %d, handed out by a live process, could be reserved here", base+i)
		}
	}
	stdin.Close()
	if err := cmd.Wait(); err != nil {
		t.Fatalf("child: %v", err)
	}
	if !reserve(base, 3) {
		t.Fatalf("ports %d-%d are still reserved after the process that had them ended", base, base+2)
	}
}

// Use tries another port while start reports the port taken, returns any
// other error at once, and gives up after 5 attempts.
func TestUse(t *testing.T) {
	taken := errors.New("taken")
	other := errors.New("other")
	for _, tc := range []struct {
		name    string
		results []error // what start returns on each call; taken after the last
		calls   int
		want    error
	}{
		{"first port works", []error{nil}, 1, nil},
		{"two ports taken, then one works", []error{taken, taken, nil}, 3, nil},
		{"another error is returned at once", []error{other}, 1, other},
		{"always taken", nil, 5, taken},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var ports []int
			err := Use(func(p int) error {
				ports = append(ports, p)
				if len(ports) <= len(tc.results) {
					return tc.results[len(ports)-1]
				}
				return taken
			}, func(err error) bool { return errors.Is(err, taken) })
			if !errors.Is(err, tc.want) || (tc.want == nil && err != nil) {
				t.Errorf("Use = %v, want %v", err, tc.want)
			}
			if len(ports) != tc.calls {
				t.Errorf("start called %d times, want %d", len(ports), tc.calls)
			}
			for i := 1; i < len(ports); i++ {
				if ports[i] == ports[i-1] {
					t.Errorf("port %d tried twice in a row", ports[i])
				}
			}
		})
	}
}
