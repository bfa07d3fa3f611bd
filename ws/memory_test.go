package ws

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"testing"
	"time"
)

// BenchmarkIdleConnectionRSS opens idleConns WebSocket connections to an
// in-process gateway, each subscribed to one of 10 channels, and reports
// the process's RSS (VmRSS) they add, per connection, after a GC that
// returns freed memory to the OS: what an idle subscriber costs the
// gateway. The clients are bare sockets (a handshake and one subscribe
// frame written by hand, no buffer or goroutine kept), so nearly all of
// the figure is the gateway's. Run it alone:
//
//	flock /tmp/pubmesh-bench.lock go test ./ws -run '^$' -bench IdleConnectionRSS -benchtime 1x
func BenchmarkIdleConnectionRSS(b *testing.B) {
	const idleConns = 2000
	g := newGW(b, Config{Insecure: true, MaxSubscriptions: -1}, gwOptions{})
	u, err := url.Parse(g.wsURL)
	if err != nil {
		b.Fatal(err)
	}
	// One connection first: the first subscriber of a channel opens its
	// fanout subscription, and the gateway's pools warm up.
	for i := range 10 {
		c, err := idleClient(u.Host, fmt.Sprintf("idle.%d", i))
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
	}
	for range b.N {
		before := settledRSS(b)
		stacks0 := stackInuse()
		goroutines0 := runtime.NumGoroutine()
		conns := make([]net.Conn, 0, idleConns)
		for i := range idleConns {
			c, err := idleClient(u.Host, fmt.Sprintf("idle.%d", i%10))
			if err != nil {
				b.Fatalf("connection %d: %v", i, err)
			}
			conns = append(conns, c)
		}
		waitFor(b, 10*time.Second, "the connections to be counted", func() bool { return g.metric("connections") >= idleConns+10 })
		after := settledRSS(b)
		stacks := stackInuse() - stacks0
		b.Logf("goroutines per connection: %.2f", float64(runtime.NumGoroutine()-goroutines0)/idleConns)
		per := float64(after-before) / idleConns
		b.ReportMetric(per, "rss-bytes/conn")
		b.ReportMetric(float64(stacks)/idleConns, "stack-bytes/conn")
		b.Logf("%d idle connections: VmRSS %d → %d KiB, %.1f KiB per connection (goroutine stacks %.1f KiB of it)",
			idleConns, before>>10, after>>10, per/1024, float64(stacks)/idleConns/1024)
		if per > maxIdleConnBytes {
			b.Errorf("%.1f KiB per idle connection, more than the %d KiB of issue 14", per/1024, maxIdleConnBytes>>10)
		}
		for _, c := range conns {
			c.Close()
		}
		waitFor(b, 10*time.Second, "the connections to close", func() bool { return g.metric("connections") <= 10 })
	}
}

// maxIdleConnBytes is issue 14's bound on the memory of an idle
// connection.
const maxIdleConnBytes = 16 << 10

// idleClient connects to the gateway at host, subscribes to channel and
// returns the socket once the ok arrived, holding no buffer.
func idleClient(host, channel string) (net.Conn, error) {
	c, err := net.DialTimeout("tcp", host, 10*time.Second)
	if err != nil {
		return nil, err
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	fail := func(err error) (net.Conn, error) { c.Close(); return nil, err }
	req := "GET /ws HTTP/1.1\r\nHost: " + host + "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
	if _, err := c.Write([]byte(req)); err != nil {
		return fail(err)
	}
	br := bufio.NewReaderSize(c, 512)
	resp, err := br.ReadString('\n')
	if err != nil || !strings.HasPrefix(resp, "HTTP/1.1 101") {
		return fail(fmt.Errorf("handshake: %q %v", resp, err))
	}
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return fail(err)
		}
		if line == "\r\n" {
			break
		}
	}
	// A masked text frame (a client's frames must be, RFC 6455 5.3),
	// with a zero mask: the payload goes as is.
	sub := []byte(`{"op":"subscribe","channel":` + strconv.Quote(channel) + `,"id":1}`)
	frame := append([]byte{0x81, 0x80 | byte(len(sub)), 0, 0, 0, 0}, sub...)
	if _, err := c.Write(frame); err != nil {
		return fail(err)
	}
	var h [2]byte
	if _, err := br.Read(h[:1]); err != nil {
		return fail(err)
	}
	if _, err := br.Read(h[1:]); err != nil {
		return fail(err)
	}
	n := int(h[1] & 0x7f)
	if n == 126 {
		var l [2]byte
		if _, err := io.ReadFull(br, l[:]); err != nil {
			return fail(err)
		}
		n = int(binary.BigEndian.Uint16(l[:]))
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(br, body); err != nil {
		return fail(err)
	}
	if !bytes.HasPrefix(body, []byte(`{"op":"ok"`)) {
		return fail(fmt.Errorf("subscribe: %s", body))
	}
	if br.Buffered() > 0 {
		return fail(fmt.Errorf("unexpected frames after the ok"))
	}
	c.SetDeadline(time.Time{})
	return c, nil
}

// settledRSS is VmRSS after a GC that hands freed memory back to the OS.
func settledRSS(t testing.TB) int64 {
	t.Helper()
	time.Sleep(200 * time.Millisecond)
	// Each GC at most halves a goroutine's stack that uses less than a
	// quarter of it: a few let the idle ones settle.
	for range 3 {
		runtime.GC()
	}
	debug.FreeOSMemory()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return kb << 10
		}
	}
	t.Fatal("no VmRSS in /proc/self/status")
	return 0
}

func stackInuse() uint64 {
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.StackInuse
}
