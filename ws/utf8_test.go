package ws

import (
	"context"
	"encoding/json"
	"net/http"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/gorilla/websocket"
	"github.com/redis/go-redis/v9"
)

// TestInvalidUTF8 (issue 10, item 3): JSON with invalid UTF-8 inside a
// string is refused by both publish paths, and whatever a node carries
// (here a raw PUBLISH straight to Redis, past the gateway and the fanout
// client) reaches subscribers as valid UTF-8 and valid JSON, so that no
// browser closes the connection (1006) and the next message still arrives.
func TestInvalidUTF8(t *testing.T) {
	t.Parallel()
	g := newGW(t, Config{Insecure: true}, gwOptions{})
	sub := g.dial(t, "", nil)
	sub.mustOK(OpSubscribe, "news", nil)

	// Publish paths: 400 bad_request over HTTP, bad_request over WebSocket.
	for _, body := range []string{"{\"t\":\"\xff\xfe\"}", "[\"ok\",\"\xc3\"]", "\"\xed\xa0\x80\""} {
		code, resp := g.post(t, "/api/publish/news", "", []byte(body))
		if code != http.StatusBadRequest || resp["code"] != CodeBadRequest {
			t.Fatalf("POST %q: %d %v, want 400 %s", body, code, resp, CodeBadRequest)
		}
	}
	pub := g.dial(t, "", nil)
	pub.send([]byte("{\"op\":\"publish\",\"channel\":\"news\",\"data\":{\"t\":\"\xff\xfe\"},\"id\":7}"))
	if f := pub.next(10*time.Second, func(f frame) bool { return f.Op != OpMessage }); f.Op != OpError || f.Code != CodeBadRequest {
		t.Fatalf("WebSocket publish of invalid UTF-8: %+v, want a bad_request error", f)
	}

	// Delivery: raw payloads published on the node itself.
	nodes := g.client.Nodes().Ready()
	if len(nodes) != 1 {
		t.Fatalf("ready nodes: %+v", nodes)
	}
	rdb := redis.NewClient(&redis.Options{Addr: nodes[0].Addr})
	t.Cleanup(func() { rdb.Close() })
	for _, tc := range []struct{ payload, want string }{
		{"{\"t\":\"\xff\xfe\"}", `{"t":"` + "\ufffd\ufffd" + `"}`},
		{"[\"a\xc3\",\"\xed\xa0\x80\"]", `["a` + "\ufffd" + `","` + "\ufffd\ufffd\ufffd" + `"]`},
		{"not json \xff", `"not json \ufffd"`}, // as encoding/json escapes it
	} {
		if err := rdb.Publish(context.Background(), "news", tc.payload).Err(); err != nil {
			t.Fatal(err)
		}
		raw := sub.rawMessage(10 * time.Second)
		if !utf8.Valid(raw) || !json.Valid(raw) {
			t.Fatalf("payload %q: frame %q is not valid UTF-8 JSON", tc.payload, raw)
		}
		var f frame
		json.Unmarshal(raw, &f)
		if string(f.Data) != tc.want {
			t.Fatalf("payload %q: data %s, want %s", tc.payload, f.Data, tc.want)
		}
	}
	// The subscriber is still there and gets the next message.
	if code, resp := g.post(t, "/api/publish/news", "", []byte(`{"next":1}`)); code != http.StatusOK {
		t.Fatalf("publish: %d %v", code, resp)
	}
	if m := sub.message(10 * time.Second); string(m.Data) != `{"next":1}` {
		t.Fatalf("next message: %+v", m)
	}
}

// rawMessage returns the bytes of the next message frame, skipping others.
func (c *wsClient) rawMessage(within time.Duration) []byte {
	c.t.Helper()
	deadline := time.Now().Add(within)
	for {
		c.c.SetReadDeadline(deadline)
		typ, b, err := c.c.ReadMessage()
		if err != nil {
			c.t.Fatalf("read: %v", err)
		}
		var f frame
		if typ == websocket.TextMessage && json.Unmarshal(b, &f) == nil && f.Op != OpMessage {
			c.queue = append(c.queue, f)
			continue
		}
		return b
	}
}
