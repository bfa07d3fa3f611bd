// Package tailbuf keeps the end of what a child process writes (its
// stderr), so that a failure can say what the process said last.
package tailbuf

import (
	"strings"
	"sync"
)

// Buffer keeps the last Max bytes written to it. It is safe for
// concurrent use; the zero value keeps nothing (set Max).
type Buffer struct {
	Max int

	mu sync.Mutex
	b  []byte
}

// New is a Buffer that keeps the last max bytes.
func New(max int) *Buffer { return &Buffer{Max: max} }

func (t *Buffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b = append(t.b, p...)
	if len(t.b) > t.Max {
		t.b = append([]byte(nil), t.b[len(t.b)-t.Max:]...)
	}
	return len(p), nil
}

// String is what the buffer holds.
func (t *Buffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.b)
}

// LastLines is the last n lines, joined by newlines.
func (t *Buffer) LastLines(n int) string {
	lines := strings.Split(strings.TrimRight(t.String(), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
