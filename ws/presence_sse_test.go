package ws

import (
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"
)

// Presence over the streaming transports: an SSE stream's ?info= shows in
// the channel's presence, and join and leave frames reach it as events of
// their own name (join, leave; not error, which ends a stream for the
// JavaScript client), with the frame as over WebSocket. Bad info is
// refused before the stream starts, as before a WebSocket upgrade.
func TestPresenceSSE(t *testing.T) {
	t.Parallel()
	secret := []byte("presence-secret")
	g := newGW(t, Config{JWTSecret: secret}, gwOptions{})
	g.applyConfig(t, presenceDoc)
	all := []string{"**"}
	carol := url.QueryEscape(token(t, secret, "carol", all, all, time.Hour))

	s := g.openSSE(t, "/sse?channel=room.9&token="+carol+"&info="+url.QueryEscape(`{"name": "Carol"}`), nil)
	s.next(10*time.Second, func(e sseEvent) bool { return e.event == "subscribed" })
	// Carol's own join comes first (a subscriber gets its own).
	ev := s.next(10*time.Second, func(e sseEvent) bool { return e.event != "" })
	var own presenceReply
	if json.Unmarshal([]byte(ev.data), &own); ev.event != OpJoin || own.Op != OpJoin || own.Info.User != "carol" || string(own.Info.Info) != `{"name":"Carol"}` {
		t.Fatalf("first event %q %s, want carol's join with her info", ev.event, ev.data)
	}

	bob := g.dialInfo(t, token(t, secret, "bob", all, all, time.Hour), "")
	bob.mustOK(OpSubscribe, "room.9", nil)
	for _, want := range []string{OpJoin, OpLeave} {
		ev := s.next(10*time.Second, func(e sseEvent) bool { return e.event != "" })
		var r presenceReply
		if err := json.Unmarshal([]byte(ev.data), &r); err != nil || ev.event != want || r.Op != want || r.Channel != "room.9" || r.Info.User != "bob" {
			t.Fatalf("event %q %s, want bob's %s", ev.event, ev.data, want)
		}
		if want == OpJoin {
			r := bob.raw(OpPresence, "room.9")
			if got := presenceClients(t, r.Clients); len(got) != 2 || got[1] != "carol@"+g.client.ID()+`{"name":"Carol"}` {
				t.Fatalf("presence = %v, want bob and carol with her info", got)
			}
			bob.c.Close()
		}
	}

	for _, tc := range []struct {
		info string
		want int
	}{
		{`{"a":`, http.StatusBadRequest},
		{`"` + strings.Repeat("x", 1100) + `"`, http.StatusRequestEntityTooLarge},
	} {
		resp, err := g.openStream("/sse?channel=room.9&token="+carol+"&info="+url.QueryEscape(tc.info), nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tc.want {
			t.Errorf("info %.20q: HTTP %d, want %d", tc.info, resp.StatusCode, tc.want)
		}
	}
}
