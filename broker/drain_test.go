package broker_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/pubmesh/pubmesh/discovery"
)

// A subscriber whose socket is full keeps Redis's last reply bytes in the
// client's reply buffer (obl), outside omem: the drain must wait for those
// too, or the subscriber loses the tail of the stream when the node stops.
func TestDrainWaitsForSlowSubscriberReplyBuffer(t *testing.T) {
	t.Parallel()
	reg := newRegistry(t)
	w := watch(t, reg)
	cfg := fastConfig(t, reg)
	cfg.DrainTimeout = 10 * time.Minute // only the flush may end the drain
	a := start(t, cfg)
	w.until(t, 15*time.Second, "ready", inState(cfg.ID, discovery.StateReady))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	sub := dialSmallWindow(t, a.Addr())
	rd := bufio.NewReader(sub)
	if _, err := sub.Write([]byte("*2\r\n$9\r\nSUBSCRIBE\r\n$4\r\nslow\r\n")); err != nil {
		t.Fatal(err)
	}
	if m, err := readPush(rd); err != nil || m[0] != "subscribe" {
		t.Fatalf("SUBSCRIBE reply %q, %v", m, err)
	}

	// Publish until Redis cannot write to the subscriber any more and keeps
	// bytes in its reply buffer.
	rdb := redis.NewClient(&redis.Options{Addr: a.Addr(), MaxRetries: -1, DisableIdentity: true})
	t.Cleanup(func() { rdb.Close() })
	payload := strings.Repeat("x", 3000)
	var n int
	var fields map[string]int64
	for {
		if err := rdb.Publish(ctx, "slow", fmt.Sprintf("%06d%s", n, payload)).Err(); err != nil {
			t.Fatal(err)
		}
		n++
		fields = subscriberBuffers(ctx, t, rdb)
		if fields["obl"] > 0 {
			break
		}
		if n > 100000 {
			t.Fatalf("the subscriber's reply buffer never filled: %v", fields)
		}
	}
	t.Logf("published %d messages; subscriber: %v", n, fields)

	sdone := make(chan error, 1)
	go func() { sdone <- a.Shutdown(ctx) }()
	w.until(t, 15*time.Second, "draining", inState(cfg.ID, discovery.StateDraining))
	// The drain handshake polls CLIENT LIST every 20ms: give it many looks
	// at a subscriber with unread bytes in obl.
	time.Sleep(time.Second)
	select {
	case <-a.Done():
		t.Fatalf("the drain finished while the subscriber had unread output (%v)", fields)
	default:
	}
	fields = subscriberBuffers(ctx, t, rdb)
	if fields["obl"] == 0 {
		t.Fatalf("subscriber's reply buffer emptied by itself: %v", fields)
	}
	if s, ok := node(w.last, cfg.ID); !ok || s.State != discovery.StateDraining {
		t.Fatalf("node %+v (present %v) while a subscriber has unread output, want draining", s, ok)
	}

	// Once the subscriber reads, it gets every message, and the drain ends.
	sub.SetReadDeadline(time.Now().Add(30 * time.Second))
	for i := range n {
		m, err := readPush(rd)
		if err != nil {
			t.Fatalf("message %d of %d: %v", i, n, err)
		}
		if want := fmt.Sprintf("%06d", i); len(m) != 3 || m[0] != "message" || !strings.HasPrefix(m[2], want) {
			t.Fatalf("message %d: %.20q, want payload %s...", i, m, want)
		}
	}
	if err := <-sdone; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	w.until(t, 10*time.Second, "gone", gone(cfg.ID))
}

// dialSmallWindow connects with a small receive buffer (set before the
// handshake, so the TCP window stays small), so that a reader that stops
// reading fills the socket soon.
func dialSmallWindow(t *testing.T, addr string) net.Conn {
	t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second, Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096)
		})
		if err != nil {
			return err
		}
		return serr
	}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// subscriberBuffers returns obl, oll and omem of the only pub/sub client.
func subscriberBuffers(ctx context.Context, t *testing.T, rdb *redis.Client) map[string]int64 {
	t.Helper()
	list, err := rdb.Do(ctx, "CLIENT", "LIST", "TYPE", "pubsub").Text()
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(list), "\n")
	if len(lines) != 1 {
		t.Fatalf("want one pub/sub client, CLIENT LIST says:\n%s", list)
	}
	out := map[string]int64{}
	for _, f := range strings.Fields(lines[0]) {
		k, v, _ := strings.Cut(f, "=")
		switch k {
		case "obl", "oll", "omem":
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				t.Fatalf("CLIENT LIST field %q", f)
			}
			out[k] = n
		}
	}
	return out
}

// readPush reads one RESP2 array of bulk strings (a pub/sub push).
func readPush(rd *bufio.Reader) ([]string, error) {
	line, err := rd.ReadString('\n')
	if err != nil {
		return nil, err
	}
	if !strings.HasPrefix(line, "*") {
		return nil, fmt.Errorf("not an array: %q", line)
	}
	n, err := strconv.Atoi(strings.TrimSpace(line[1:]))
	if err != nil {
		return nil, err
	}
	out := make([]string, n)
	for i := range out {
		h, err := rd.ReadString('\n')
		if err != nil {
			return nil, err
		}
		h = strings.TrimSpace(h)
		switch h[0] {
		case ':':
			out[i] = h[1:]
		case '$':
			l, err := strconv.Atoi(h[1:])
			if err != nil {
				return nil, err
			}
			b := make([]byte, l+2)
			if _, err := io.ReadFull(rd, b); err != nil {
				return nil, err
			}
			out[i] = string(b[:l])
		default:
			return nil, fmt.Errorf("unexpected %q", h)
		}
	}
	return out, nil
}

// Once a node has left for good, the acks about it are deleted: clients
// live long, and node ids come and go (a new pod, a new id), so they would
// pile up under the clients' leases.
func TestAgentClearsAcksWhenItLeaves(t *testing.T) {
	t.Parallel()
	reg := newRegistry(t)
	w := watch(t, reg)
	cfg := fastConfig(t, reg)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c, err := reg.RegisterClient(ctx, discovery.ClientInfo{ID: "c1"}, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(context.Background()) })
	a := start(t, cfg)
	w.until(t, 15*time.Second, "joining", inState(cfg.ID, discovery.StateJoining))
	n, _ := node(w.last, cfg.ID)
	if err := c.Ack(ctx, cfg.ID, discovery.Ack{RunID: n.RunID, Incarnation: n.Incarnation, State: discovery.AckSubscribed}); err != nil {
		t.Fatal(err)
	}
	w.until(t, 15*time.Second, "ready", inState(cfg.ID, discovery.StateReady))
	if err := c.Ack(ctx, cfg.ID, discovery.Ack{RunID: n.RunID, Incarnation: n.Incarnation, State: discovery.AckReleased}); err != nil {
		t.Fatal(err)
	}
	if err := a.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	resp, err := reg.Client().Get(ctx, discovery.DefaultPrefix+"/"+reg.Cluster()+"/acks/"+cfg.ID+"/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) != 0 {
		t.Errorf("%d acks about the node are left after it drained", len(resp.Kvs))
	}
}
