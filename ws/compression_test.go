package ws

import (
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// TestCompression: with Compression on, a client that offers
// permessage-deflate gets it, and the frames it reads (replies, messages
// shared with an uncompressed subscriber, a large repetitive one) are
// intact; a client that does not offer it, or a gateway without
// Compression, talks uncompressed.
func TestCompression(t *testing.T) {
	t.Parallel()
	g := newGW(t, Config{Insecure: true, Compression: true}, gwOptions{})
	off := newGW(t, Config{Insecure: true}, gwOptions{})
	dial := func(g *gw, offer bool) (*wsClient, string) {
		t.Helper()
		d := websocket.Dialer{HandshakeTimeout: 10 * time.Second, EnableCompression: offer}
		c, resp, err := d.Dial(g.wsURL, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return &wsClient{t: t, c: c}, resp.Header.Get("Sec-WebSocket-Extensions")
	}
	z, ext := dial(g, true)
	if !strings.Contains(ext, "permessage-deflate") {
		t.Fatalf("compression on, offered: extensions %q", ext)
	}
	plain, ext := dial(g, false)
	if ext != "" {
		t.Fatalf("not offered: extensions %q", ext)
	}
	if _, ext := dial(off, true); ext != "" {
		t.Fatalf("compression off: extensions %q", ext)
	}
	z.mustOK(OpSubscribe, "news", nil)
	plain.mustOK(OpSubscribe, "news", nil)
	big := `"` + strings.Repeat("pubmesh ", 2000) + `"`
	for _, data := range []string{`{"n":1}`, big} {
		if code, body := g.post(t, "/api/publish/news", "", []byte(data)); code != 200 {
			t.Fatalf("publish: %d %v", code, body)
		}
		for _, c := range []*wsClient{z, plain} {
			if m := c.message(10 * time.Second); string(m.Data) != data {
				t.Fatalf("message of %d bytes arrived as %d bytes", len(data), len(m.Data))
			}
		}
	}
	z.mustOK(OpPublish, "news", map[string]int{"n": 2})
	if m := plain.message(10 * time.Second); string(m.Data) != `{"n":2}` {
		t.Fatalf("published over a compressed connection: %s", m.Data)
	}
}
