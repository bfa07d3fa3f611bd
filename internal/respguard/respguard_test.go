package respguard_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/pubmesh/pubmesh/internal/respguard"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// chunked is a net.Conn that reads data in chunks of n bytes.
type chunked struct {
	net.Conn
	data []byte
	n    int
}

func (c *chunked) Read(p []byte) (int, error) {
	if len(c.data) == 0 {
		return 0, io.EOF
	}
	k := min(c.n, len(p), len(c.data))
	copy(p, c.data[:k])
	c.data = c.data[k:]
	return k, nil
}

func (c *chunked) RemoteAddr() net.Addr { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 7000} }

// readAll reads everything through the guard, in chunks of n bytes.
func readAll(stream string, n int) ([]byte, error) {
	g := respguard.New(&chunked{data: []byte(stream), n: n}, nil)
	var out bytes.Buffer
	buf := make([]byte, 4096)
	for {
		k, err := g.Read(buf)
		out.Write(buf[:k])
		if err == io.EOF {
			return out.Bytes(), nil
		}
		if err != nil {
			return out.Bytes(), err
		}
	}
}

func TestValidRepliesPass(t *testing.T) {
	big := strings.Repeat("x", 100_000)
	for _, s := range []string{
		"+PONG\r\n",
		"-ERR unknown command\r\n",
		":42\r\n",
		"$5\r\nhello\r\n",
		"$0\r\n\r\n",
		"$-1\r\n",
		"*-1\r\n",
		"*0\r\n",
		"*3\r\n$9\r\nsubscribe\r\n$4\r\nnews\r\n:1\r\n",
		"*3\r\n$7\r\nmessage\r\n$4\r\nnews\r\n$6\r\n\r\n\n*9\r\n", // a payload that looks like headers
		"$100000\r\n" + big + "\r\n",
		"%2\r\n+server\r\n+redis\r\n+proto\r\n:3\r\n",
		">3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$1\r\nm\r\n",
		"|1\r\n+ttl\r\n:3\r\n+value\r\n",
		"_\r\n,3.14\r\n#t\r\n(123456789012345678901234567890\r\n=8\r\ntxt:abcd\r\n!5\r\nERR x\r\n",
		"*2\r\n*2\r\n:1\r\n:2\r\n*1\r\n$1\r\na\r\n+OK\r\n",
	} {
		for _, n := range []int{1, 2, 3, 7, 4096} {
			got, err := readAll(s, n)
			if err != nil || string(got) != s {
				t.Errorf("%.40q in chunks of %d: %v (read %d of %d bytes)", s, n, err, len(got), len(s))
			}
		}
	}
}

func TestBadRepliesFail(t *testing.T) {
	for _, tc := range []struct{ name, stream, reason string }{
		{"huge map (HELLO)", "%4000000000\r\n", "aggregate"},
		{"huge array", "*4000000000000\r\n", "aggregate"},
		{"huge bulk", "$9223372036854775806\r\n", "bulk string"},
		{"bulk over 512 MiB", "$536870913\r\n", "bulk string"},
		{"bad bulk length", "$abc\r\n", "bulk length"},
		{"negative length", "*-5\r\n", "aggregate length"},
		{"endless line", "+" + strings.Repeat("a", respguard.MaxLine+10), "line longer"},
		{"deep nesting", strings.Repeat("*1\r\n", respguard.MaxDepth+1), "nested"},
		{"too many elements", strings.Repeat("*65536\r\n", 17), "elements in one reply"},
		{"HTTP", "HTTP/1.1 400 Bad Request\r\n\r\n", "not a RESP type"},
		{"empty line", "\r\n", "empty line"},
	} {
		for _, n := range []int{1, 5, 4096} {
			_, err := readAll(tc.stream, n)
			var ge *respguard.Error
			if !errors.As(err, &ge) || !strings.Contains(ge.Reason, tc.reason) {
				t.Errorf("%s in chunks of %d: %v, want a respguard.Error about %q", tc.name, n, err, tc.reason)
			}
		}
	}
}

// fake serves reply to every read, forever.
func fake(t *testing.T, reply string) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		var conns []net.Conn
		defer func() {
			for _, c := range conns {
				c.Close()
			}
		}()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			conns = append(conns, c)
			go func() {
				buf := make([]byte, 4096)
				for {
					if _, err := c.Read(buf); err != nil {
						return
					}
					c.Write([]byte(reply))
				}
			}()
		}
	}()
	t.Cleanup(func() { l.Close(); <-done })
	return l.Addr().String()
}

// TestGoRedis: through go-redis, a server answering a huge map to HELLO
// (which without the guard gets the process killed for lack of memory) or
// deep nesting is a clean error, and the memory in use stays small.
func TestGoRedis(t *testing.T) {
	for _, reply := range []string{"%4000000000\r\n", "*4000000000000\r\n", strings.Repeat("*1\r\n", 100000), "$9223372036854775806\r\n"} {
		addr := fake(t, reply)
		var bad *respguard.Error
		opt := &redis.Options{Addr: addr, DisableIdentity: true, MaxRetries: -1, ReadTimeout: 2 * time.Second}
		var nd net.Dialer
		opt.Dialer = respguard.Dialer(nd.DialContext, func(e *respguard.Error) { bad = e })
		rdb := redis.NewClient(opt)
		err := rdb.Ping(context.Background()).Err()
		rdb.Close()
		var ge *respguard.Error
		if !errors.As(err, &ge) || bad == nil {
			t.Errorf("reply %.20q: %v, want a respguard.Error", reply, err)
		}
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		if ms.HeapAlloc > 512<<20 {
			t.Errorf("reply %.20q: heap %d MiB", reply, ms.HeapAlloc>>20)
		}
	}
}

// FuzzConn: any stream, read in any chunk size, never panics, and the
// verdict (the bytes passed and whether it failed) does not depend on how
// the stream is split into reads.
func FuzzConn(f *testing.F) {
	for _, s := range []string{"+PONG\r\n", "*3\r\n$9\r\nsubscribe\r\n$4\r\nnews\r\n:1\r\n", "%4000000000\r\n", "|1\r\n+a\r\n:1\r\n+b\r\n", "$-1\r\n*0\r\n"} {
		f.Add([]byte(s), uint8(3))
	}
	f.Fuzz(func(t *testing.T, data []byte, n uint8) {
		whole, errWhole := readAll(string(data), len(data)+1)
		parts, errParts := readAll(string(data), int(n%16)+1)
		if (errWhole == nil) != (errParts == nil) {
			t.Fatalf("whole: %v; in chunks of %d: %v", errWhole, n%16+1, errParts)
		}
		if errWhole == nil && !bytes.Equal(whole, parts) {
			t.Fatalf("different bytes passed")
		}
	})
}
