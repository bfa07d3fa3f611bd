package freeport

import (
	"net"
	"strconv"
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
