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
