package ws

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

// sseEvent is one Server-Sent Event, or a comment line (comment set).
type sseEvent struct {
	id, event, data string
	hasID           bool
	comment         string
}

// sseClient reads a real /sse stream over HTTP.
type sseClient struct {
	t      testing.TB
	resp   *http.Response
	events chan sseEvent
	lastID string
}

// openSSE opens GET path (with its query) with the headers hdr, failing
// the test unless the status is 200.
func (g *gw) openSSE(t testing.TB, path string, hdr http.Header) *sseClient {
	t.Helper()
	resp, err := g.openStream(path, hdr)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		t.Fatalf("GET %s: %d %s", path, resp.StatusCode, b)
	}
	c := &sseClient{t: t, resp: resp, events: make(chan sseEvent, 1024)}
	go func() {
		defer close(c.events)
		r := bufio.NewReader(resp.Body)
		var ev sseEvent
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return
			}
			line = strings.TrimSuffix(line, "\n")
			switch {
			case line == "":
				if ev.event != "" || ev.data != "" {
					c.events <- ev
				}
				ev = sseEvent{}
			case strings.HasPrefix(line, ":"):
				c.events <- sseEvent{comment: strings.TrimSpace(line[1:])}
			default:
				k, v, _ := strings.Cut(line, ":")
				v = strings.TrimPrefix(v, " ")
				switch k {
				case "id":
					ev.id, ev.hasID = v, true
				case "event":
					ev.event = v
				case "data":
					if ev.data != "" {
						ev.data += "\n"
					}
					ev.data += v
				}
			}
		}
	}()
	t.Cleanup(func() { resp.Body.Close() })
	return c
}

func (g *gw) openStream(path string, hdr http.Header) (*http.Response, error) {
	req, _ := http.NewRequest(http.MethodGet, g.url+path, nil)
	for k, v := range hdr {
		req.Header[k] = v
	}
	return http.DefaultClient.Do(req)
}

// next returns the next event (not a comment) for which match is true,
// remembering the last id as EventSource does.
func (c *sseClient) next(within time.Duration, match func(sseEvent) bool) sseEvent {
	c.t.Helper()
	deadline := time.After(within)
	for {
		select {
		case ev, ok := <-c.events:
			if !ok {
				c.t.Fatalf("the stream ended")
			}
			if ev.comment != "" {
				continue
			}
			if ev.hasID {
				c.lastID = ev.id
			}
			if match(ev) {
				return ev
			}
		case <-deadline:
			c.t.Fatalf("no matching event within %s", within)
		}
	}
}

// messages reads n message events and returns their frames.
func (c *sseClient) messages(n int) []frame {
	c.t.Helper()
	var out []frame
	for len(out) < n {
		ev := c.next(10*time.Second, func(e sseEvent) bool { return e.event != "subscribed" })
		if ev.event != OpMessage {
			c.t.Fatalf("event %s: %s, want message", ev.event, ev.data)
		}
		var f frame
		if err := json.Unmarshal([]byte(ev.data), &f); err != nil {
			c.t.Fatalf("data %q: %v", ev.data, err)
		}
		out = append(out, f)
	}
	return out
}

// TestSSE: EventSource-shaped clients get each message as event message
// whose data is exactly the WebSocket message frame, an id on history
// channels only, heartbeat comments every ping interval; errors before
// the stream are HTTP statuses with the JSON error body, and an op that
// fails after it has started ends it with event error, then event close.
func TestSSE(t *testing.T) {
	t.Parallel()
	key := "k"
	g := newGW(t, Config{APIKeys: []string{key}, PingInterval: 300 * time.Millisecond}, gwOptions{})
	g.applyConfig(t, `namespaces: [{match: "h.*", history_size: 100}, {match: "closed.*", allow_subscribe: none}]`)
	auth := http.Header{"Authorization": {"Bearer " + key}}

	s := g.openSSE(t, "/sse?channel=h.a&channel=plain", auth)
	ws := g.dial(t, key, nil)
	ws.mustOK(OpSubscribe, "h.a", nil)
	for _, ch := range []string{"h.a", "plain"} {
		s.next(10*time.Second, func(e sseEvent) bool { return e.event == "subscribed" && strings.Contains(e.data, `"id":"`+ch+`"`) })
	}
	if code, body := g.post(t, "/api/publish/h.a", key, []byte(`{"n":1}`)); code != 200 {
		t.Fatalf("publish: %d %v", code, body)
	}
	ev := s.next(10*time.Second, func(e sseEvent) bool { return e.event == OpMessage })
	wsm := ws.message(10 * time.Second)
	wsb, _ := json.Marshal(wsm)
	var sf frame
	json.Unmarshal([]byte(ev.data), &sf)
	sb, _ := json.Marshal(sf)
	if string(sb) != string(wsb) || !strings.HasPrefix(ev.data, `{"op":"message","channel":"h.a","data":{"n":1}`) {
		t.Fatalf("SSE data %s\nWebSocket frame %s", ev.data, wsb)
	}
	if want := "h.a=" + url.QueryEscape(wsm.Pos); !ev.hasID || ev.id != want {
		t.Fatalf("id %q (set %v), want %q", ev.id, ev.hasID, want)
	}
	g.post(t, "/api/publish/plain", key, []byte(`2`))
	ev = s.next(10*time.Second, func(e sseEvent) bool { return e.event == OpMessage })
	if ev.hasID || !strings.Contains(ev.data, `"channel":"plain","data":2`) {
		t.Fatalf("message on a channel without history: %+v", ev)
	}
	// Heartbeats.
	pings := 0
	for deadline := time.After(5 * time.Second); pings < 2; {
		select {
		case e := <-s.events:
			if e.comment == "ping" {
				pings++
			}
		case <-deadline:
			t.Fatalf("%d heartbeats in 5s with a 300ms ping interval", pings)
		}
	}
	if got := g.metric("streams", "sse"); got != 1 {
		t.Errorf("pubmesh_ws_streams{transport=sse} = %v, want 1", got)
	}

	// Refusals before the stream: statuses and the JSON error body.
	for _, tc := range []struct {
		path   string
		hdr    http.Header
		status int
		code   string
	}{
		{"/sse?channel=a", nil, 401, CodeUnauthorized},
		{"/sse?channel=a&token=wrong", nil, 401, CodeUnauthorized},
		{"/sse", auth, 400, CodeBadRequest},
		{"/sse?channel=closed.x", auth, 403, CodeForbidden},
		{"/sse?channel=bad%20name", auth, 400, CodeBadRequest},
		{"/sse?channel=plain&channel=x", http.Header{"Authorization": {"Bearer " + key}, "Last-Event-ID": {"plain=abc"}}, 404, CodeNoHistory},
	} {
		resp, err := g.openStream(tc.path, tc.hdr)
		if err != nil {
			t.Fatal(err)
		}
		var body map[string]string
		json.NewDecoder(resp.Body).Decode(&body)
		resp.Body.Close()
		if resp.StatusCode != tc.status || body["code"] != tc.code {
			t.Errorf("GET %s: %d %v, want %d %s", tc.path, resp.StatusCode, body, tc.status, tc.code)
		}
	}
	// Token in the query works as the header does.
	q := g.openSSE(t, "/sse?channel=plain&token="+key, nil)
	q.next(10*time.Second, func(e sseEvent) bool { return e.event == "subscribed" })

	// After the start: a position that is not one (checked by the
	// resume) is event error, then close.
	bad := g.openSSE(t, "/sse?channel=h.a&last_event_id="+url.QueryEscape("h.a=garbage"), auth)
	ev = bad.next(10*time.Second, func(sseEvent) bool { return true })
	if ev.event != "error" || !strings.Contains(ev.data, `"code":"bad_request"`) {
		t.Fatalf("first event of a bad position: %+v", ev)
	}
	ev = bad.next(10*time.Second, func(sseEvent) bool { return true })
	if ev.event != "close" || !strings.Contains(ev.data, `"op":"close","code":1011`) {
		t.Fatalf("after the error: %+v", ev)
	}
}

// TestSSEResume: an SSE client whose gateway restarts reconnects with the
// last id it got as Last-Event-ID, and gets every message published
// meanwhile on each of its history channels exactly once, in order, after
// a subscribed event with recovered:true; a channel without history
// carries no position and simply subscribes again. A position from
// before what history keeps is recovered:false, explicitly.
func TestSSEResume(t *testing.T) {
	t.Parallel()
	cfg := Config{Insecure: true}
	a := newGW(t, cfg, gwOptions{})
	a.applyConfig(t, `namespaces: [{match: "h.*", history_size: 100}, {match: "small.*", history_size: 2}]`)
	b := a.another(t, cfg, "127.0.0.1:0") // publishes while a is down
	addr := strings.TrimPrefix(a.url, "http://")

	s := a.openSSE(t, "/sse?channel=h.a&channel=h.b&channel=small.c&channel=plain", nil)
	for range 4 {
		s.next(10*time.Second, func(e sseEvent) bool { return e.event == "subscribed" })
	}
	publishRange(t, b, "h.a", 1, 3)
	publishRange(t, b, "small.c", 1, 1)
	// Channels are not ordered among themselves: the last h.a message is
	// the one with 3.
	var lastA frame
	for _, m := range s.messages(4) {
		if m.Channel == "h.a" {
			lastA = m
		}
	}
	if string(lastA.Data) != "3" {
		t.Fatalf("before the restart, the last h.a message: %+v", lastA)
	}
	last := s.lastID
	vals, err := url.ParseQuery(last)
	if err != nil || vals.Get("h.a") != lastA.Pos || vals.Get("h.b") == "" || vals.Get("small.c") == "" || vals.Has("plain") {
		t.Fatalf("last id %q: want positions of h.a (its last message), h.b (its subscribe), small.c, and no plain", last)
	}

	if err := a.gateway.Close(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the stream to end", func() bool {
		select {
		case _, ok := <-s.events:
			return !ok
		default:
			return false
		}
	})
	publishRange(t, b, "h.a", 4, 8)
	publishRange(t, b, "h.b", 1, 2)
	publishRange(t, b, "small.c", 2, 5) // 4 messages, history keeps 2: a gap
	a2 := a.another(t, cfg, addr)

	r := a2.openSSE(t, "/sse?channel=h.a&channel=h.b&channel=small.c&channel=plain", http.Header{"Last-Event-ID": {last}})
	oks := map[string]frame{}
	var msgs []frame
	for len(oks) < 4 || len(msgs) < 5+2+2 {
		ev := r.next(10*time.Second, func(sseEvent) bool { return true })
		var f frame
		if err := json.Unmarshal([]byte(ev.data), &f); err != nil {
			t.Fatalf("%s: %v", ev.data, err)
		}
		switch ev.event {
		case "subscribed":
			var ch string
			json.Unmarshal(f.ID, &ch)
			oks[ch] = f
		case OpMessage:
			msgs = append(msgs, f)
		default:
			t.Fatalf("event %s %s", ev.event, ev.data)
		}
	}
	for ch, want := range map[string]bool{"h.a": true, "h.b": true, "small.c": false} {
		if f := oks[ch]; f.Recovered == nil || *f.Recovered != want {
			t.Errorf("subscribed %s: %+v, want recovered %v", ch, f, want)
		}
	}
	if oks["plain"].Recovered != nil {
		t.Errorf("plain resumed: %+v", oks["plain"])
	}
	per := map[string][]string{}
	for _, m := range msgs {
		per[m.Channel] = append(per[m.Channel], string(m.Data))
	}
	want := map[string]string{"h.a": "4,5,6,7,8", "h.b": "1,2", "small.c": "4,5"}
	for ch, w := range want {
		if g := strings.Join(per[ch], ","); g != w {
			t.Errorf("%s after the restart: %s, want %s", ch, g, w)
		}
	}
	// Live again, with nothing more from history.
	publishRange(t, b, "h.a", 9, 9)
	m := r.messages(1)[0]
	if m.Channel != "h.a" || string(m.Data) != "9" {
		t.Fatalf("live after the resume: %+v", m)
	}
}

// TestHTTPStream: GET /api/stream/{channel} is newline-delimited JSON read
// by a plain HTTP client: the subscribe's ok, then one message frame per
// line (the WebSocket frame's JSON), empty lines as heartbeats; since
// resumes; a refusal is a status with the JSON error body.
func TestHTTPStream(t *testing.T) {
	t.Parallel()
	g := newGW(t, Config{Insecure: true, PingInterval: 200 * time.Millisecond}, gwOptions{})
	g.applyConfig(t, histDoc)
	publishRange(t, g, "h.s", 1, 2)

	resp, err := g.openStream("/api/stream/h.s", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/x-ndjson" {
		t.Fatalf("status %d, type %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	lines := make(chan string, 100)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	line := func(skipEmpty bool) string {
		t.Helper()
		for {
			select {
			case l, ok := <-lines:
				if !ok {
					t.Fatal("stream ended")
				}
				if l == "" && skipEmpty {
					continue
				}
				return l
			case <-time.After(10 * time.Second):
				t.Fatal("no line within 10s")
			}
		}
	}
	var ok frame
	if err := json.Unmarshal([]byte(line(true)), &ok); err != nil || ok.Op != OpOK || ok.Pos == "" {
		t.Fatalf("first line: %+v %v", ok, err)
	}
	publishRange(t, g, "h.s", 3, 4)
	var m frame
	for i := 3; i <= 4; i++ {
		l := line(true)
		if err := json.Unmarshal([]byte(l), &m); err != nil || m.Op != OpMessage || string(m.Data) != strconv.Itoa(i) ||
			!strings.HasPrefix(l, `{"op":"message","channel":"h.s","data":`+strconv.Itoa(i)+`,"id":`) {
			t.Fatalf("line %q", l)
		}
	}
	if l := line(false); l != "" {
		// A message line may not be followed at once by a heartbeat; wait
		// for one.
		if l2 := line(false); l2 != "" {
			t.Fatalf("no heartbeat: %q, %q", l, l2)
		}
	}
	resp.Body.Close()

	// since resumes: 5 and 6 after 4's position.
	publishRange(t, g, "h.s", 5, 6)
	r2, err := g.openStream("/api/stream/h.s?since="+url.QueryEscape(m.Pos), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer r2.Body.Close()
	sc := bufio.NewScanner(r2.Body)
	var got []string
	for sc.Scan() && len(got) < 3 {
		if sc.Text() != "" {
			got = append(got, sc.Text())
		}
	}
	if len(got) != 3 || !strings.Contains(got[0], `"recovered":true,"count":2`) || !strings.Contains(got[1], `"data":5`) || !strings.Contains(got[2], `"data":6`) {
		t.Fatalf("resumed stream: %q", got)
	}
	if code, body := g.get(t, "/api/stream/bad%20name", ""); code != 400 || body["code"] != CodeBadRequest {
		t.Fatalf("bad channel: %d %v", code, body)
	}
	if code, body := g.get(t, "/api/stream/plain?since=x", ""); code != 404 || body["code"] != CodeNoHistory {
		t.Fatalf("since without history: %d %v", code, body)
	}
	waitFor(t, 10*time.Second, "the stream gauge to drop to 1", func() bool { return g.metric("streams", "stream") == 1 })
}

// TestCurlStream: `curl -N` is a subscriber of GET /api/stream/{channel}:
// it prints the subscribe's ok, then each message on its own line as it
// is published.
func TestCurlStream(t *testing.T) {
	curl, err := exec.LookPath("curl")
	if err != nil {
		t.Skip("curl is not installed")
	}
	t.Parallel()
	g := newGW(t, Config{APIKeys: []string{"key"}}, gwOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, curl, "-sSN", "-H", "Authorization: Bearer key", g.url+"/api/stream/news")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); cmd.Wait() })
	lines := bufio.NewScanner(out)
	if !lines.Scan() || !strings.HasPrefix(lines.Text(), `{"op":"ok","id":"news"`) {
		t.Fatalf("first line %q", lines.Text())
	}
	for i := 1; i <= 3; i++ {
		if code, body := g.post(t, "/api/publish/news", "key", []byte(strconv.Itoa(i))); code != 200 {
			t.Fatalf("publish: %d %v", code, body)
		}
		if !lines.Scan() || !strings.HasPrefix(lines.Text(), `{"op":"message","channel":"news","data":`+strconv.Itoa(i)+`,`) {
			t.Fatalf("line for message %d: %q", i, lines.Text())
		}
	}
}

// GET /api/stream?channel=&pattern= streams several channels and a
// pattern as NDJSON: each message line names its channel (and pattern).
func TestHTTPStreamQuery(t *testing.T) {
	t.Parallel()
	g := newGW(t, Config{Insecure: true}, gwOptions{})
	resp, err := g.openStream("/api/stream?channel=q.a&pattern=p.*", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/x-ndjson" {
		t.Fatalf("status %d, type %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	sc := bufio.NewScanner(resp.Body)
	next := func() frame {
		t.Helper()
		for sc.Scan() {
			if sc.Text() == "" {
				continue
			}
			var f frame
			if err := json.Unmarshal(sc.Bytes(), &f); err != nil {
				t.Fatalf("line %q: %v", sc.Text(), err)
			}
			return f
		}
		t.Fatalf("stream ended: %v", sc.Err())
		return frame{}
	}
	for range 2 { // the ok of each subscription
		if f := next(); f.Op != OpOK {
			t.Fatalf("first lines: %+v", f)
		}
	}
	publishRange(t, g, "q.a", 1, 1)
	publishRange(t, g, "p.x", 2, 2)
	publishRange(t, g, "q.b", 3, 3) // neither subscribed nor matched
	publishRange(t, g, "q.a", 4, 4)
	// Channels and patterns are separate subscriptions: no order between them.
	got := map[string]bool{}
	for range 3 {
		f := next()
		if f.Op != OpMessage {
			t.Fatalf("line %+v", f)
		}
		got[f.Channel+"|"+f.Pattern+"|"+string(f.Data)] = true
	}
	for _, w := range []string{"q.a||1", "p.x|p.*|2", "q.a||4"} {
		if !got[w] {
			t.Errorf("missing %s in %v", w, got)
		}
	}
	if code, body := g.get(t, "/api/stream", ""); code != 400 {
		t.Fatalf("no channel: %d %v", code, body)
	}
}
