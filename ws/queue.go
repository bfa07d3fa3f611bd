package ws

import "sync"

// frameQueue is a session's bounded FIFO of frames for its writer. It
// replaces a buffered channel for two reasons: memory, as an idle
// connection holds no slots (a channel of 256 pointers costs 2 KiB from
// the start; the ring here grows with what is queued and is dropped once
// drained), and wake-ups, as only a push onto an empty queue signals the
// writer: the frames that arrive while it writes join its batch without
// waking anyone.
//
// Any goroutine may push; the writer alone pops.
type frameQueue struct {
	mu    sync.Mutex
	ring  []*outFrame // nil while empty (or a small one kept)
	head  int         // index of the oldest frame in ring
	n     int         // frames queued
	limit int         // the most frames it holds (SendQueue)

	// wake has a value while there may be frames the writer has not seen:
	// a push onto an empty queue puts one there, or calls notify instead
	// if it is set (the WebSocket writer, started on demand).
	wake   chan struct{}
	notify func()
	// room has a value after a pop from a full queue, for a reply waiting
	// for room.
	room chan struct{}
}

// keepRing is the largest ring a drained queue keeps: a connection that
// gets a frame now and then does not allocate one each time, an idle one
// holds at most this many slots.
const keepRing = 8

func newFrameQueue(limit int) *frameQueue {
	return &frameQueue{limit: max(limit, 1), wake: make(chan struct{}, 1), room: make(chan struct{}, 1)}
}

// push appends f, or reports false if the queue is full.
func (q *frameQueue) push(f *outFrame) bool {
	q.mu.Lock()
	if q.n == q.limit {
		q.mu.Unlock()
		return false
	}
	if q.n == len(q.ring) {
		q.grow()
	}
	q.ring[(q.head+q.n)%len(q.ring)] = f
	q.n++
	first := q.n == 1
	q.mu.Unlock()
	if first {
		if q.notify != nil {
			q.notify()
		} else {
			signal(q.wake)
		}
	}
	return true
}

// grow doubles the ring (up to limit), keeping the frames in order.
func (q *frameQueue) grow() {
	size := min(max(2*len(q.ring), keepRing), q.limit)
	ring := make([]*outFrame, size)
	n := copy(ring, q.ring[q.head:])
	copy(ring[n:], q.ring[:q.head])
	q.ring, q.head = ring, 0
}

// pop removes the oldest frame; writer only.
func (q *frameQueue) pop() (*outFrame, bool) {
	q.mu.Lock()
	if q.n == 0 {
		q.mu.Unlock()
		return nil, false
	}
	f := q.ring[q.head]
	q.ring[q.head] = nil
	wasFull := q.n == q.limit
	q.n--
	q.head++
	if q.head == len(q.ring) || q.n == 0 {
		q.head = 0
	}
	if q.n == 0 && len(q.ring) > keepRing {
		q.ring = nil
	}
	q.mu.Unlock()
	if wasFull {
		signal(q.room)
	}
	return f, true
}

// len is how many frames are queued.
func (q *frameQueue) len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.n
}

// rewake makes the writer come back for frames it left in the queue (a
// batch ended at maxBatch).
func (q *frameQueue) rewake() {
	if q.len() == 0 {
		return
	}
	if q.notify != nil {
		q.notify()
	} else {
		signal(q.wake)
	}
}

// signal puts a value in c, a channel of capacity 1, unless one is there.
func signal(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}
