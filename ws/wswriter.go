package ws

import (
	"sync"
	"time"

	"github.com/gorilla/websocket"
)

// Why this file exists: a WebSocket connection's writer is a goroutine
// only while there is something to write. An idle connection, most of a
// gateway's, then holds one goroutine (its reader) instead of two, and no
// writer stack grown by a write path that once went deep. Whoever gives
// the writer work (a frame pushed onto an empty queue, a pong owed, a ping
// due, the session closing, the reader ending) calls kick, which starts
// the writer unless it runs; the writer does everything pending, then
// stops, unless more came meanwhile. Starting a goroutine costs about what
// waking a parked one does, and it happens once per batch, not per frame.

// wsWriter is the writer's state in a wsConn.
type wsWriter struct {
	mu      sync.Mutex
	running bool   // a writer goroutine is on it
	over    bool   // the writer ended the connection: never start again
	pong    string // the payload of the pong owed, if owed
	owed    bool
	pingDue bool
	ping    *time.Timer // sets pingDue every ping interval

	done chan struct{} // closed when the writer has ended the connection
}

// startPings arms the keepalive: a ping every ping interval.
func (c *wsConn) startPings() {
	c.w.mu.Lock()
	defer c.w.mu.Unlock()
	c.w.ping = time.AfterFunc(c.s.pingInterval, func() {
		c.w.mu.Lock()
		c.w.pingDue = true
		c.w.mu.Unlock()
		c.kick()
	})
}

// owePong records a pong for the client's ping; one owed is enough.
func (c *wsConn) owePong(data string) {
	c.w.mu.Lock()
	if !c.w.owed {
		c.w.pong, c.w.owed = data, true
	}
	c.w.mu.Unlock()
	c.kick()
}

// kick starts the writer unless it runs or has ended.
func (c *wsConn) kick() {
	c.w.mu.Lock()
	start := !c.w.running && !c.w.over
	c.w.running = true
	c.w.mu.Unlock()
	if start {
		go c.write()
	}
}

// readOver reports whether the reader has returned.
func (c *wsConn) readOver() bool {
	select {
	case <-c.readDone:
		return true
	default:
		return false
	}
}

// write is the writer: the only one that writes frames. It does what is
// pending, the session's end first, and stops when nothing is left.
func (c *wsConn) write() {
	s := c.s
	for {
		switch {
		case s.isClosing():
			c.finish()
			c.end()
			return
		case c.readOver():
			c.afterRead()
			c.end()
			return
		}
		c.w.mu.Lock()
		pong, owed, pingDue := c.w.pong, c.w.owed, c.w.pingDue
		c.w.pong, c.w.owed, c.w.pingDue = "", false, false
		c.w.mu.Unlock()
		var err error
		if owed {
			err = c.ws.WriteControl(websocket.PongMessage, []byte(pong), time.Now().Add(s.h.cfg.WriteTimeout))
		}
		if pingDue && err == nil {
			err = c.ws.WriteControl(websocket.PingMessage, nil, time.Now().Add(s.h.cfg.WriteTimeout))
			c.w.ping.Reset(s.pingInterval)
		}
		if err == nil {
			if f, ok := s.queue.pop(); ok {
				err = c.writeBatch(f)
			}
		}
		if err != nil {
			s.log.Debug("ws: write failed", "err", err)
			c.end()
			return
		}
		// Stop, unless work came meanwhile: whoever brings work after
		// running is cleared starts a writer of its own (kick).
		c.w.mu.Lock()
		more := c.w.owed || c.w.pingDue || s.queue.len() > 0 || s.isClosing() || c.readOver()
		if !more {
			c.w.running = false
		}
		c.w.mu.Unlock()
		if !more {
			return
		}
	}
}

// end closes the socket for good: no writer starts after it.
func (c *wsConn) end() {
	c.w.mu.Lock()
	c.w.over = true
	if c.w.ping != nil {
		c.w.ping.Stop()
	}
	c.w.mu.Unlock()
	c.ws.Close()
	close(c.w.done)
}
