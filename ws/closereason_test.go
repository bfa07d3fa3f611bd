package ws

import (
	"errors"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// A client's close frame is echoed with its code and its reason.
func TestCloseEchoesClientReason(t *testing.T) {
	t.Parallel()
	g := newGW(t, Config{Insecure: true}, gwOptions{})
	for _, tc := range []struct {
		code   int
		reason string
	}{
		{websocket.CloseNormalClosure, "bye for now"},
		{websocket.CloseGoingAway, "tab closed"},
		{4321, ""},
	} {
		c := g.dial(t, "", nil)
		c.mustOK(OpSubscribe, "news", nil)
		if err := c.c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(tc.code, tc.reason), time.Now().Add(5*time.Second)); err != nil {
			t.Fatal(err)
		}
		c.c.SetReadDeadline(time.Now().Add(20 * time.Second))
		var ce *websocket.CloseError
		for {
			_, _, err := c.c.ReadMessage()
			if err == nil {
				continue
			}
			if !errors.As(err, &ce) {
				t.Fatalf("close %d %q: %v, want the gateway's close frame", tc.code, tc.reason, err)
			}
			break
		}
		if ce.Code != tc.code || ce.Text != tc.reason {
			t.Errorf("the gateway answered close %d %q with %d %q", tc.code, tc.reason, ce.Code, ce.Text)
		}
	}
}
