package tailbuf

import (
	"fmt"
	"testing"
)

func TestBuffer(t *testing.T) {
	b := New(14)
	for i := range 10 {
		fmt.Fprintf(b, "line %d\n", i)
	}
	if got := b.String(); got != "line 8\nline 9\n" {
		t.Errorf("kept %q, want the last 14 bytes", got)
	}
	if got := b.LastLines(1); got != "line 9" {
		t.Errorf("LastLines(1) = %q", got)
	}
	if got := b.LastLines(5); got != "line 8\nline 9" {
		t.Errorf("LastLines(5) = %q", got)
	}
}
