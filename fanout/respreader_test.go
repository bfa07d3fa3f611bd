package fanout

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/pubmesh/pubmesh/internal/respguard"
)

// reply is what respReader returned for one reply, copied.
type reply struct {
	kind  byte
	str   string
	null  bool
	elems []string
}

func readAll(t testing.TB, r io.Reader) ([]reply, error) {
	p := newRespReader(r, "test")
	var out []reply
	for {
		if err := p.next(); err != nil {
			return out, err
		}
		x := reply{kind: p.kind, str: string(p.str), null: p.kind == '$' && p.str == nil}
		for _, e := range p.elems {
			if e == nil {
				x.elems = append(x.elems, "<nil>")
				continue
			}
			x.elems = append(x.elems, string(e))
		}
		out = append(out, x)
	}
}

func encodeArray(elems ...string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "*%d\r\n", len(elems))
	for _, e := range elems {
		fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(e), e)
	}
	return b.String()
}

func TestRespReader(t *testing.T) {
	big := strings.Repeat("x", 3*respBufSize+17)
	tests := []struct {
		name string
		in   string
		want []reply
		bad  string // a *respguard.Error whose reason contains this
	}{
		{name: "message", in: encodeArray("message", "news", "pm1 hello"),
			want: []reply{{kind: '*', elems: []string{"message", "news", "pm1 hello"}}}},
		{name: "pmessage and subscribe count", in: encodeArray("pmessage", "n*", "news", "") + "*3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:12\r\n",
			want: []reply{{kind: '*', elems: []string{"pmessage", "n*", "news", ""}}, {kind: '*', elems: []string{"subscribe", "a", "12"}}}},
		{name: "handshake replies", in: "+OK\r\n-WRONGPASS invalid\r\n$5\r\nhello\r\n$-1\r\n:7\r\n",
			want: []reply{{kind: '+', str: "OK"}, {kind: '-', str: "WRONGPASS invalid"}, {kind: '$', str: "hello"}, {kind: '$', null: true}, {kind: ':', str: "7"}}},
		{name: "null element", in: "*2\r\n$4\r\npong\r\n$-1\r\n", want: []reply{{kind: '*', elems: []string{"pong", "<nil>"}}}},
		{name: "RESP3 push", in: ">3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$1\r\np\r\n", want: []reply{{kind: '*', elems: []string{"message", "c", "p"}}}},
		{name: "a payload larger than the buffer", in: encodeArray("message", "c", big) + encodeArray("message", "c", "after"),
			want: []reply{{kind: '*', elems: []string{"message", "c", big}}, {kind: '*', elems: []string{"message", "c", "after"}}}},
		{name: "binary payload with CRLF inside", in: encodeArray("message", "c", "a\r\nb\x00"),
			want: []reply{{kind: '*', elems: []string{"message", "c", "a\r\nb\x00"}}}},
		{name: "huge bulk announced", in: "$9223372036854775806\r\n", bad: "bulk length"},
		{name: "bulk over 512 MiB", in: "*3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$536870913\r\n", bad: "bulk length"},
		{name: "huge array", in: "*4000000000\r\n", bad: "array"},
		{name: "nested arrays", in: strings.Repeat("*1\r\n", 1000), bad: "element of type"},
		{name: "map", in: "%4000000000\r\n", bad: "starts with"},
		{name: "HTTP", in: "HTTP/1.1 400 Bad Request\r\n", bad: "starts with"},
		{name: "endless line", in: "+" + strings.Repeat("a", respguard.MaxLine+10), bad: "line longer"},
		{name: "bulk without CRLF", in: "$3\r\nabcXY", bad: "CRLF"},
		{name: "empty line", in: "\r\n", bad: "starts with"},
		{name: "negative length", in: "$-5\r\n", bad: "bulk length"},
	}
	for _, tt := range tests {
		for _, split := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/split=%v", tt.name, split), func(t *testing.T) {
				var r io.Reader = strings.NewReader(tt.in)
				if split {
					r = iotest.OneByteReader(r)
				}
				got, err := readAll(t, r)
				if tt.bad != "" {
					var rg *respguard.Error
					if !errors.As(err, &rg) || !strings.Contains(rg.Reason, tt.bad) {
						t.Fatalf("err = %v, want a respguard.Error about %q", err, tt.bad)
					}
					return
				}
				if !errors.Is(err, io.EOF) {
					t.Fatalf("err = %v, want EOF after the replies", err)
				}
				if len(got) != len(tt.want) {
					t.Fatalf("got %d replies, want %d: %+v", len(got), len(tt.want), got)
				}
				for i := range got {
					g, w := got[i], tt.want[i]
					if g.kind != w.kind || g.str != w.str || g.null != w.null || strings.Join(g.elems, "|") != strings.Join(w.elems, "|") {
						t.Fatalf("reply %d = %+v, want %+v", i, g, w)
					}
				}
			})
		}
	}
}

// A message read from a subscription connection costs no allocation in
// the reader.
func TestRespReaderAllocations(t *testing.T) {
	one := encodeArray("message", "news", "pm1 0123456789abcdef 1 0 1\npayload")
	in := bytes.Repeat([]byte(one), 1000)
	r := bytes.NewReader(in)
	p := newRespReader(r, "test")
	allocs := testing.AllocsPerRun(500, func() {
		if err := p.next(); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Errorf("%v allocations per message", allocs)
	}
}

// FuzzRespReader: any bytes give replies or an error, never a panic or a
// reply that is not in the input; a well-formed reply reads back as
// written, however the reads are split.
func FuzzRespReader(f *testing.F) {
	f.Add([]byte(encodeArray("message", "news", "hello")), "payload", uint8(0))
	f.Add([]byte("+OK\r\n$-1\r\n:3\r\n"), "", uint8(1))
	f.Add([]byte("*2\r\n$4\r\npong\r\n$-1\r\n"), "x\r\ny", uint8(3))
	f.Add([]byte("$9223372036854775806\r\n"), "", uint8(2))
	f.Fuzz(func(t *testing.T, garbage []byte, payload string, chunk uint8) {
		// Arbitrary input: no panic, and bounded memory (the limits).
		p := newRespReader(bytes.NewReader(garbage), "fuzz")
		for range 64 {
			if err := p.next(); err != nil {
				break
			}
			for _, e := range p.elems {
				if e != nil && !bytes.Contains(garbage, e) {
					t.Fatalf("element %q not in the input", e)
				}
			}
		}
		if len(p.buf) > 4*respBufSize+len(garbage)*2 {
			t.Fatalf("buffer of %d bytes for %d bytes of input", len(p.buf), len(garbage))
		}
		// A well-formed message, read in chunks of any size.
		in := encodeArray("message", "ch", payload) + "+OK\r\n"
		var r io.Reader = strings.NewReader(in)
		if chunk > 0 {
			r = &chunkReader{b: []byte(in), n: int(chunk)}
		}
		got, err := readAll(t, r)
		if !errors.Is(err, io.EOF) || len(got) != 2 || len(got[0].elems) != 3 || got[0].elems[2] != payload || got[1].str != "OK" {
			t.Fatalf("read back %+v, %v", got, err)
		}
	})
}

// chunkReader returns at most n bytes per Read.
type chunkReader struct {
	b []byte
	n int
}

func (c *chunkReader) Read(p []byte) (int, error) {
	if len(c.b) == 0 {
		return 0, io.EOF
	}
	k := min(len(p), c.n, len(c.b))
	copy(p, c.b[:k])
	c.b = c.b[k:]
	return k, nil
}
