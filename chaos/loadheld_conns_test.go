package chaos

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/gorilla/websocket"
)

// heldTransport is how TestLoadHeld10k holds its connections: WebSocket
// (/ws, a subscribe frame) or Server-Sent Events (GET /sse?channel=).
// Both are dialed from one of 8 loopback source addresses, so that
// ephemeral ports (and TIME_WAIT from earlier tests) are never short.
type heldTransport struct {
	name  string // the subtest's name
	label string // what the report calls the connections
	// goroutines is how many goroutines the gateway may hold per
	// connection (WebSocket: reader and writer; SSE: the handler, the
	// writer, the watch for the client leaving, net/http's background read).
	goroutines int
	dial       func(g *gateway, i int) (heldConn, error)
}

// heldConn is one subscriber of channel "all".
type heldConn interface {
	// next returns the data of the next message frame, skipping others.
	next(deadline time.Time) ([]byte, error)
	close()
}

var heldTransports = []heldTransport{
	{name: "websocket", label: "WebSocket connections", goroutines: 3, dial: dialHeldWS},
	{name: "sse", label: "SSE streams (`GET /sse?channel=all`)", goroutines: 5, dial: dialHeldSSE},
}

func sourceDialer(i int) *net.Dialer {
	return &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(2+i%8))}, Timeout: 30 * time.Second}
}

type heldWS struct{ c *websocket.Conn }

func dialHeldWS(g *gateway, i int) (heldConn, error) {
	d := websocket.Dialer{HandshakeTimeout: 30 * time.Second, NetDialContext: sourceDialer(i).DialContext, ReadBufferSize: 1024, WriteBufferSize: 1024}
	wc, resp, err := d.Dial(g.url(), nil)
	if resp != nil && resp.Body != nil {
		resp.Body.Close()
	}
	if err != nil {
		return nil, err
	}
	wc.SetWriteDeadline(time.Now().Add(30 * time.Second))
	if err := wc.WriteMessage(websocket.TextMessage, []byte(`{"op":"subscribe","channel":"all","id":1}`)); err != nil {
		wc.Close()
		return nil, err
	}
	wc.SetReadDeadline(time.Now().Add(60 * time.Second))
	_, b, err := wc.ReadMessage()
	if err != nil || string(b) != `{"op":"ok","id":1}` {
		wc.Close()
		return nil, fmt.Errorf("subscribe answered %q, %v", b, err)
	}
	return heldWS{wc}, nil
}

func (h heldWS) next(deadline time.Time) ([]byte, error) {
	for {
		h.c.SetReadDeadline(deadline)
		_, b, err := h.c.ReadMessage()
		if err != nil {
			return nil, err
		}
		if data, ok := messageData(b); ok {
			return data, nil
		}
	}
}

func (h heldWS) close() { h.c.Close() }

// heldSSE reads one /sse stream. Its connection is its own (a Transport
// per stream: one response body holds one connection anyway), so that
// next can set a read deadline on it.
type heldSSE struct {
	conn   net.Conn
	body   interface{ Close() error }
	r      *bufio.Reader
	cancel context.CancelFunc
}

func dialHeldSSE(g *gateway, i int) (heldConn, error) {
	h := &heldSSE{}
	d := sourceDialer(i)
	tr := &http.Transport{
		DisableCompression: true,
		DisableKeepAlives:  true,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := d.DialContext(ctx, network, addr)
			h.conn = c
			return c, err
		},
	}
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+g.addr+"/sse?channel=all", nil)
	resp, err := (&http.Client{Transport: tr, Timeout: 0}).Do(req)
	if err != nil {
		cancel()
		return nil, err
	}
	h.body = resp.Body
	if resp.StatusCode != http.StatusOK {
		h.close()
		return nil, fmt.Errorf("GET /sse: %s", resp.Status)
	}
	h.r = bufio.NewReaderSize(resp.Body, 1024)
	event, data, err := h.event(time.Now().Add(60 * time.Second))
	if err != nil || event != "subscribed" || !bytes.Contains(data, []byte(`"op":"ok","id":"all"`)) {
		h.close()
		return nil, fmt.Errorf("subscribe answered event %q %q, %v", event, data, err)
	}
	return h, nil
}

// event reads the next event (comments, such as heartbeats, are skipped).
func (h *heldSSE) event(deadline time.Time) (event string, data []byte, err error) {
	if h.conn != nil {
		h.conn.SetReadDeadline(deadline)
	}
	for {
		line, err := h.r.ReadSlice('\n')
		if err != nil {
			return "", nil, err
		}
		line = bytes.TrimSuffix(line, []byte("\n"))
		switch {
		case len(line) == 0:
			if event != "" || data != nil {
				return event, data, nil
			}
		case bytes.HasPrefix(line, []byte("event: ")):
			event = string(line[len("event: "):])
		case bytes.HasPrefix(line, []byte("data: ")):
			data = append([]byte(nil), line[len("data: "):]...)
		}
	}
}

func (h *heldSSE) next(deadline time.Time) ([]byte, error) {
	for {
		event, data, err := h.event(deadline)
		if err != nil {
			return nil, err
		}
		switch event {
		case "message":
			if d, ok := messageData(data); ok {
				return d, nil
			}
		case "error", "close":
			return nil, errors.New("stream ended: " + strings.TrimSpace(string(data)))
		}
	}
}

func (h *heldSSE) close() {
	h.cancel()
	if h.body != nil {
		h.body.Close()
	}
}
