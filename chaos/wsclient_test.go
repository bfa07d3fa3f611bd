package chaos

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
)

// rclient is a WebSocket client that behaves like ws/static/pubmesh.js:
// after any close it reconnects with exponential backoff and jitter (the
// delay of attempt k is drawn from [step/2, step], step = minDelay*2^k
// capped at maxDelay, and the attempt count resets once connected), and
// after each connect it subscribes every channel again. Received messages
// go to its sink; each confirmed subscription opens an interval there and
// a lost connection closes them.
type rclient struct {
	url      string
	channels []int // channel numbers it subscribes
	minDelay time.Duration
	maxDelay time.Duration
	local    net.IP // source address to dial from; nil: any
	sink     recorder

	stop chan struct{}
	done chan struct{}

	mu       sync.Mutex
	conn     *websocket.Conn // the current connection, nil while none
	closes   []time.Time     // when each connection was seen to end
	subsDone []time.Time     // when every channel was confirmed, per connection
	errs     []string        // error frames and dial errors, the first few
	dials    int
	connects int

	okCount atomic.Int64 // subscription confirmations, all connections

	// resume: keep each channel's last position (from message frames and
	// the subscribe reply) and subscribe again with since, as pubmesh.js
	// does on channels with history. The subscription is then one
	// interval from the first confirmation: nothing may be missing.
	resume    bool
	pos       map[int]string // channel -> last position; under mu
	recovered int            // resumes answered recovered:true; under mu
	notRecov  int            // resumes answered recovered:false; under mu
	firstOK   map[int]bool   // channels confirmed once; under mu
}

func newRClient(url string, channels []int, k recorder) *rclient {
	return &rclient{
		url: url, channels: channels, minDelay: 500 * time.Millisecond, maxDelay: 15 * time.Second,
		sink: k, stop: make(chan struct{}), done: make(chan struct{}),
	}
}

// withResume makes the client resume its channels from their positions
// after every reconnect (channels with history).
func (r *rclient) withResume() *rclient {
	r.resume, r.pos, r.firstOK = true, map[int]string{}, map[int]bool{}
	return r
}

// recoveries returns how many resumes were answered recovered:true and
// recovered:false.
func (r *rclient) recoveries() (ok, not int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.recovered, r.notRecov
}

// run connects and keeps the client connected until close.
func (r *rclient) run() {
	defer close(r.done)
	attempt := 0
	for {
		select {
		case <-r.stop:
			return
		default:
		}
		r.mu.Lock()
		r.dials++
		r.mu.Unlock()
		if r.session() {
			attempt = 0 // pubmesh.js resets once the socket opened
		}
		select {
		case <-r.stop:
			return
		default:
		}
		step := min(r.maxDelay, r.minDelay<<min(attempt, 20))
		delay := step/2 + time.Duration(rand.Int64N(int64(step/2)+1))
		attempt = min(attempt+1, 30)
		t := time.NewTimer(delay)
		select {
		case <-r.stop:
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// session is one connection: dial, subscribe, read until it ends. It
// reports whether the socket opened.
func (r *rclient) session() bool {
	d := websocket.Dialer{HandshakeTimeout: 10 * time.Second}
	if r.local != nil {
		nd := net.Dialer{LocalAddr: &net.TCPAddr{IP: r.local}, Timeout: 10 * time.Second}
		d.NetDialContext = nd.DialContext
	}
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		select {
		case <-r.stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	c, resp, err := d.DialContext(ctx, r.url, nil)
	cancel()
	if resp != nil && resp.Body != nil {
		resp.Body.Close()
	}
	if err != nil {
		r.noteErr("dial: " + err.Error())
		return false
	}
	r.mu.Lock()
	select {
	case <-r.stop:
		r.mu.Unlock()
		c.Close()
		return true
	default:
	}
	r.conn = c
	r.connects++
	r.mu.Unlock()
	defer func() {
		now := time.Now()
		c.Close()
		if !r.resume {
			r.sink.unsubscribed(now)
		}
		r.mu.Lock()
		r.conn = nil
		r.closes = append(r.closes, now)
		r.mu.Unlock()
	}()
	// Subscribe every channel, ids 1..n in the order of r.channels.
	var batch bytes.Buffer
	for i, ch := range r.channels {
		batch.Reset()
		r.mu.Lock()
		since := r.pos[ch]
		r.mu.Unlock()
		if since != "" {
			fmt.Fprintf(&batch, `{"op":"subscribe","channel":"%s","since":"%s","id":%d}`, channelName(ch), since, i+1)
		} else {
			fmt.Fprintf(&batch, `{"op":"subscribe","channel":"%s","id":%d}`, channelName(ch), i+1)
		}
		c.SetWriteDeadline(time.Now().Add(10 * time.Second))
		if err := c.WriteMessage(websocket.TextMessage, batch.Bytes()); err != nil {
			return true
		}
	}
	pending := len(r.channels)
	for {
		_, b, err := c.ReadMessage()
		if err != nil {
			return true
		}
		now := time.Now()
		if data, ok := messageData(b); ok {
			r.sink.add(data, now)
			if r.resume {
				r.notePos(b)
			}
			continue
		}
		var f struct {
			Op        string          `json:"op"`
			ID        json.RawMessage `json:"id"`
			Code      string          `json:"code"`
			Message   string          `json:"message"`
			Pos       string          `json:"pos"`
			Recovered *bool           `json:"recovered"`
		}
		if json.Unmarshal(b, &f) != nil {
			r.noteErr(fmt.Sprintf("frame %.80q is not JSON", b))
			continue
		}
		switch f.Op {
		case "ok":
			var id int
			if json.Unmarshal(f.ID, &id) == nil && id >= 1 && id <= len(r.channels) {
				ch := r.channels[id-1]
				r.mu.Lock()
				first := !r.firstOK[ch]
				if r.resume {
					r.firstOK[ch] = true
					if f.Pos != "" && r.pos[ch] == "" {
						r.pos[ch] = f.Pos
					}
					if f.Recovered != nil && *f.Recovered {
						r.recovered++
					} else if f.Recovered != nil {
						r.notRecov++
					}
				}
				r.mu.Unlock()
				if !r.resume || first {
					r.sink.subscribed(ch, now)
				}
				r.okCount.Add(1)
				if pending--; pending == 0 {
					r.mu.Lock()
					r.subsDone = append(r.subsDone, now)
					r.mu.Unlock()
				}
			}
		case "error":
			r.noteErr(f.Code + ": " + f.Message)
		}
	}
}

// messageData returns the data of a message frame, which the gateway
// writes as {"op":"message","channel":…,"data":…,"id":…,"ts":…}.
func messageData(b []byte) ([]byte, bool) {
	if !bytes.HasPrefix(b, []byte(`{"op":"message"`)) {
		return nil, false
	}
	i := bytes.Index(b, []byte(`"data":`))
	if i < 0 {
		return nil, false
	}
	rest := b[i+len(`"data":`):]
	j := bytes.Index(rest, []byte(`,"id":`))
	if j < 0 {
		return nil, false
	}
	return rest[:j], true
}

// notePos remembers the position of a message frame ("pos" is its last
// field, after the data).
func (r *rclient) notePos(b []byte) {
	i := bytes.LastIndex(b, []byte(`"pos":"`))
	if i < 0 {
		return
	}
	rest := b[i+len(`"pos":"`):]
	j := bytes.IndexByte(rest, '"')
	if j < 0 {
		return
	}
	var ch struct {
		Channel string `json:"channel"`
	}
	ci := -1
	if json.Unmarshal(b, &ch) == nil {
		for _, c := range r.channels {
			if channelName(c) == ch.Channel {
				ci = c
			}
		}
	}
	if ci < 0 {
		return
	}
	r.mu.Lock()
	r.pos[ci] = string(rest[:j])
	r.mu.Unlock()
}

func (r *rclient) noteErr(s string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.errs) < 5 {
		r.errs = append(r.errs, s)
	}
}

// close stops the client and waits for it.
func (r *rclient) close() {
	select {
	case <-r.stop:
	default:
		close(r.stop)
	}
	r.mu.Lock()
	if r.conn != nil {
		r.conn.Close()
	}
	r.mu.Unlock()
	<-r.done
}

// subscribedAfter returns when the client had every channel confirmed on a
// connection made after t, or the zero time.
func (r *rclient) subscribedAfter(t time.Time) time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, s := range r.subsDone {
		if s.After(t) {
			return s
		}
	}
	return time.Time{}
}

// closedAfter returns when the client first saw a connection end after t,
// or the zero time.
func (r *rclient) closedAfter(t time.Time) time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, c := range r.closes {
		if c.After(t) {
			return c
		}
	}
	return time.Time{}
}

// subscribedNow reports whether the client has a connection with every
// channel confirmed.
func (r *rclient) subscribedNow() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.conn != nil && len(r.subsDone) > 0 && (len(r.closes) == 0 || r.subsDone[len(r.subsDone)-1].After(r.closes[len(r.closes)-1]))
}
