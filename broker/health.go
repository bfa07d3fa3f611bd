package broker

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"
)

// probe talks to the node's Redis for health checks: PING with a timeout,
// and INFO for the registry value and the metrics. It keeps one connection
// and drops it after any error, so the next check dials afresh. It is not
// safe for concurrent use: only the run goroutine (and startProcess, called
// by it) uses it.
//
// It speaks the few lines of RESP it needs itself rather than through
// go-redis: a health check wants exactly one attempt bounded by the health
// timeout, while go-redis's pool retries dials, then reports the last dial
// error for up to a second after the server is back, and logs through a
// process-wide logger.
//
// With a password it sends AUTH on every new connection; with TLS it dials
// TLS (see Config.clientTLS). Errors never include the password.
type probe struct {
	addr       string
	timeout    time.Duration
	user, pass string      // AUTH [user] pass on connect, if pass is set
	tls        *tls.Config // nil: plain TCP
	conn       net.Conn    // nil until the first check, and after an error
	rd         *bufio.Reader
}

func newProbe(addr string, timeout time.Duration, user, pass string) *probe {
	return &probe{addr: addr, timeout: timeout, user: user, pass: pass}
}

// setTLS makes the next connection use tc (nil: plain TCP).
func (p *probe) setTLS(tc *tls.Config) {
	p.close()
	p.tls = tc
}

func (p *probe) close() {
	if p.conn != nil {
		p.conn.Close()
		p.conn, p.rd = nil, nil
	}
}

// do sends one command and returns its reply: a simple string, or the body
// of a bulk string. The whole exchange, dial included, is bounded by the
// health timeout and by ctx.
func (p *probe) do(ctx context.Context, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	reply, err := p.exchange(ctx, args)
	if err != nil {
		p.close()
	}
	return reply, err
}

func (p *probe) exchange(ctx context.Context, args []string) (string, error) {
	if p.conn == nil {
		if err := p.connect(ctx); err != nil {
			return "", err
		}
	}
	return p.roundTrip(ctx, args)
}

// connect dials (TLS if set) and authenticates, within ctx.
func (p *probe) connect(ctx context.Context) error {
	var c net.Conn
	var err error
	if p.tls != nil {
		d := tls.Dialer{Config: p.tls}
		c, err = d.DialContext(ctx, "tcp", p.addr)
		if err != nil {
			return fmt.Errorf("redis: TLS: %w", err)
		}
	} else {
		var d net.Dialer
		if c, err = d.DialContext(ctx, "tcp", p.addr); err != nil {
			return err
		}
	}
	p.conn, p.rd = c, bufio.NewReader(c)
	if p.pass == "" {
		return nil
	}
	auth := []string{"AUTH", p.pass}
	if p.user != "" {
		auth = []string{"AUTH", p.user, p.pass}
	}
	if _, err := p.roundTrip(ctx, auth); err != nil {
		return fmt.Errorf("redis: AUTH: %w", err)
	}
	return nil
}

// roundTrip sends one command on the open connection and reads its reply.
func (p *probe) roundTrip(ctx context.Context, args []string) (string, error) {
	dl, _ := ctx.Deadline()
	p.conn.SetDeadline(dl)
	// A ctx cancelled early (the agent stops) must not wait for the deadline.
	// The func may run after do has closed and cleared p.conn, so it holds
	// its own reference.
	conn := p.conn
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	var req []byte
	req = fmt.Appendf(req, "*%d\r\n", len(args))
	for _, a := range args {
		req = fmt.Appendf(req, "$%d\r\n%s\r\n", len(a), a)
	}
	if _, err := p.conn.Write(req); err != nil {
		return "", err
	}
	// A reply line is short; one that does not end within the reader's
	// buffer (4 KiB) is not Redis talking, and must not grow without bound.
	b, err := p.rd.ReadSlice('\n')
	if errors.Is(err, bufio.ErrBufferFull) {
		return "", fmt.Errorf("redis: reply line longer than %d bytes: not a Redis server", p.rd.Size())
	}
	if err != nil {
		return "", err
	}
	line := strings.TrimSuffix(string(b), "\r\n")
	if line == "" {
		return "", errors.New("redis: empty reply")
	}
	switch line[0] {
	case '+':
		return line[1:], nil
	case '-':
		return "", fmt.Errorf("redis: %s", line[1:])
	case '$':
		n, err := strconv.Atoi(line[1:])
		if err != nil || n < 0 || n > 16<<20 {
			return "", fmt.Errorf("redis: bad bulk length %q", line)
		}
		buf := make([]byte, n+2)
		if _, err := io.ReadFull(p.rd, buf); err != nil {
			return "", err
		}
		return string(buf[:n]), nil
	}
	return "", fmt.Errorf("redis: unexpected reply %q", line)
}

// ping sends PING and waits at most the health timeout for PONG.
func (p *probe) ping(ctx context.Context) error {
	r, err := p.do(ctx, "PING")
	if err == nil && r != "PONG" {
		err = fmt.Errorf("redis: PING answered %q", r)
	}
	return err
}

// info is what the agent reads from INFO.
type info struct {
	pid            int
	runID          string
	version        string
	clients        int64
	pubsubChannels int64
	pubsubPatterns int64
	uptime         int64 // seconds
	evictedKeys    int64 // evicted_keys: since the Redis started
	keys           int64 // keys in db0 (0 when INFO keyspace has no db0)
}

// serverInfo reads INFO server: the pid, run_id and version.
func (p *probe) serverInfo(ctx context.Context) (info, error) {
	s, err := p.do(ctx, "INFO", "server")
	if err != nil {
		return info{}, err
	}
	return parseInfo(s), nil
}

// statsInfo reads INFO clients, stats and keyspace, for the metrics.
func (p *probe) statsInfo(ctx context.Context) (info, error) {
	s, err := p.do(ctx, "INFO", "clients", "stats", "keyspace")
	if err != nil {
		return info{}, err
	}
	return parseInfo(s), nil
}

// parseInfo reads the fields the agent uses from an INFO reply and ignores
// the rest.
func parseInfo(s string) info {
	var in info
	sc := bufio.NewScanner(strings.NewReader(s))
	for sc.Scan() {
		k, v, ok := strings.Cut(strings.TrimSpace(sc.Text()), ":")
		if !ok {
			continue
		}
		n, _ := strconv.ParseInt(v, 10, 64)
		switch k {
		case "process_id":
			in.pid = int(n)
		case "run_id":
			in.runID = v
		case "redis_version":
			in.version = v
		case "uptime_in_seconds":
			in.uptime = n
		case "connected_clients":
			in.clients = n
		case "pubsub_channels":
			in.pubsubChannels = n
		case "pubsub_patterns":
			in.pubsubPatterns = n
		case "evicted_keys":
			in.evictedKeys = n
		case "db0":
			// db0:keys=3,expires=3,avg_ttl=0
			for f := range strings.SplitSeq(v, ",") {
				if k, v, _ := strings.Cut(f, "="); k == "keys" {
					in.keys, _ = strconv.ParseInt(v, 10, 64)
				}
			}
		}
	}
	return in
}

// checkHealth PINGs the Redis once, updates the metrics, and acts on the
// result: after HealthFailures misses in a row the node leaves (its key is
// deleted, so clients stop using it at once); after a PING that works, a
// node without a key registers again as joining. While the child is down
// and a restart is pending there is nothing to check. It returns an error
// only when the node cannot start at all (see register).
func (a *Agent) checkHealth(ctx context.Context, s *runState) error {
	if a.cfg.Attach == "" && s.child == nil {
		return nil
	}
	t0 := time.Now()
	err := s.probe.ping(ctx)
	if ctx.Err() != nil {
		return nil
	}
	if err == nil {
		a.m.ping.Observe(time.Since(t0).Seconds())
		a.m.redisUp.Set(1)
		if in, ierr := s.probe.statsInfo(ctx); ierr == nil {
			a.m.clients.Set(float64(in.clients))
			a.m.pubsubChannels.Set(float64(in.pubsubChannels))
			a.m.pubsubPatterns.Set(float64(in.pubsubPatterns))
			a.m.historyKeys.Set(float64(in.keys))
			a.countEvictions(s, in.evictedKeys)
		}
	} else {
		a.m.pingFailures.Inc()
		a.m.redisUp.Set(0)
	}
	missed := s.health.failures
	if s.health.record(err) {
		if missed > 0 {
			a.log.Info("redis answers PING again", "after_misses", missed)
		}
		if s.reg == nil && !time.Now().Before(s.nextReg) {
			if a.cfg.Attach != "" {
				// It may have restarted with its own configuration while
				// the node was away.
				s.conf.applied.unknown = true
			}
			a.syncConfig(ctx, s)
			return a.register(ctx, s)
		}
		a.syncConfig(ctx, s)
		return nil
	}
	if s.health.failures == s.health.limit {
		a.log.Warn("redis missed PINGs; leaving the cluster until it answers", "misses", s.health.failures, "err", err)
	}
	a.leave(s, leaveHealth)
	return nil
}

// countEvictions adds to the evictions counter what the Redis evicted
// since the last look. A child starts at 0; an attached Redis's first look
// is the baseline (what it evicted before the agent watched it is not
// counted). A count lower than the last one is a Redis that restarted: all
// of its evictions are new. A warning is logged at most once a minute.
func (a *Agent) countEvictions(s *runState, evicted int64) {
	if !s.evict.known {
		s.evict = evictions{known: true, last: evicted}
		return
	}
	d := evicted - s.evict.last
	if d < 0 {
		d = evicted
	}
	s.evict.last = evicted
	if d == 0 {
		return
	}
	a.m.historyEvicted.Add(float64(d))
	s.evict.unlogged += d
	if time.Since(s.evict.logged) >= time.Minute {
		a.log.Warn("redis is full (maxmemory) and evicted history streams; recoveries that needed them say recovered:false",
			"evicted", s.evict.unlogged, "policy", memoryPolicy)
		s.evict.logged, s.evict.unlogged = time.Now(), 0
	}
}

// evictions is what countEvictions remembers.
type evictions struct {
	known    bool      // last is a count read from this Redis (or 0 for a new child)
	last     int64     // evicted_keys at the last look
	unlogged int64     // evictions not logged yet
	logged   time.Time // the last warning
}

// health counts consecutive PING misses. It is owned by the run goroutine.
type health struct {
	failures int // consecutive misses
	limit    int // misses before the node leaves
}

// record notes one PING result and reports whether the node is healthy:
// true after a success, false once limit misses happened in a row.
func (h *health) record(err error) (healthy bool) {
	if err == nil {
		h.failures = 0
		return true
	}
	h.failures++
	return h.failures < h.limit
}
