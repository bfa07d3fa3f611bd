package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gorilla/websocket"

	"github.com/pubmesh/pubmesh/fanout"
	"github.com/pubmesh/pubmesh/ws"
)

// gatewayTarget is row 7: pubmesh nodes as in row 5, a WebSocket gateway
// (ws.Handler on its own fanout client, served on a loopback port) and
// WebSocket subscribers (gorilla/websocket), each subscribed to every
// channel with subscribe frames. Publishes go through a separate fanout
// client, one Publish call per message, as in row 5.
//
// The gateway runs with Insecure (loopback, no tokens), no subscription
// limit, and a send queue of MaxBacklog frames so that the benchmark's own
// backlog bound, not the slow-consumer limit, paces the publishers. Its
// CPU counts as client CPU: it runs in this process.
//
// Row 11 is row 7 with permessage-deflate: the gateway runs with
// Compression and the subscribers offer it, so that the gateway compresses
// every frame once per subscriber (and the subscribers inflate it): the
// difference in client CPU per message is compression's cost.
type gatewayTarget struct {
	*pubmeshTarget
	gw       *ws.Gateway
	url      string
	compress bool
}

func newGatewayTarget(ctx context.Context, srv *servers, ee *etcdEnv, cfg Config, nodes int, compress bool) (target, error) {
	pt, err := newPubmeshTarget(ctx, srv, ee, cfg, nodes, 1, "")
	if err != nil {
		return nil, err
	}
	// Built by ws.StartGateway, as `pubmesh gateway` builds it: the same
	// fanout configuration (Overflow: Block) and handler.
	gw, err := ws.StartGateway(ctx, ws.GatewayConfig{
		Fanout:  fanout.Config{EtcdClient: pt.cli, Cluster: pt.cluster, Logger: pt.log},
		Handler: ws.Config{Insecure: true, MaxSubscriptions: -1, SendQueue: cfg.MaxBacklog, Logger: pt.log, Compression: compress},
		Listen:  "127.0.0.1:0",
	})
	if err != nil {
		pt.close()
		return nil, fmt.Errorf("bench: gateway: %w", err)
	}
	return &gatewayTarget{pubmeshTarget: pt, gw: gw, url: gw.WebSocketURL(), compress: compress}, nil
}

func (t *gatewayTarget) subscribe(ctx context.Context, channels []string, sk *sink) (func(), error) {
	d := websocket.Dialer{HandshakeTimeout: 10 * time.Second, EnableCompression: t.compress}
	c, resp, err := d.DialContext(ctx, t.url, http.Header{})
	if err != nil {
		return nil, fmt.Errorf("bench: dial gateway: %w", err)
	}
	resp.Body.Close()
	if t.compress && !strings.Contains(resp.Header.Get("Sec-WebSocket-Extensions"), "permessage-deflate") {
		c.Close()
		return nil, errors.New("bench: the gateway did not negotiate permessage-deflate")
	}
	fail := func(err error) (func(), error) {
		c.Close()
		return nil, err
	}
	for i, ch := range channels {
		f := []byte(`{"op":"subscribe","channel":` + strconv.Quote(ch) + `,"id":` + strconv.Itoa(i+1) + `}`)
		if err := c.WriteMessage(websocket.TextMessage, f); err != nil {
			return fail(fmt.Errorf("bench: subscribe frame: %w", err))
		}
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	for ok := 0; ok < len(channels); {
		_, b, err := c.ReadMessage()
		if err != nil {
			return fail(fmt.Errorf("bench: gateway subscribe: %w", err))
		}
		if !bytes.HasPrefix(b, []byte(`{"op":"ok"`)) {
			return fail(fmt.Errorf("bench: gateway subscribe: unexpected frame %.200s", b))
		}
		ok++
	}
	c.SetReadDeadline(time.Time{})
	rec := sk.recorder()
	done := make(chan struct{})
	var closing sync.Once
	var closed = make(chan struct{})
	go func() {
		defer close(done)
		data := []byte(`"data":`)
		for {
			_, b, err := c.ReadMessage()
			if err != nil {
				select {
				case <-closed:
				default:
					t.log.Warn("bench: WebSocket subscriber closed", "err", err)
				}
				return
			}
			i := bytes.Index(b, data)
			if i < 0 {
				continue
			}
			if ts, ok := stampOf(b[i+len(data):]); ok {
				rec.record(ts)
			}
		}
	}()
	return func() {
		closing.Do(func() {
			close(closed)
			c.Close()
			<-done
		})
	}, nil
}

func (t *gatewayTarget) close() {
	if err := t.gw.Close(); err != nil && !errors.Is(err, context.Canceled) {
		t.log.Warn("bench: gateway shutdown", "err", err)
	}
	t.pubmeshTarget.close()
}
