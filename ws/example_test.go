package ws_test

import (
	"context"
	"fmt"
	"log"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/gorilla/websocket"

	"github.com/pubmesh/pubmesh/discovery"
	"github.com/pubmesh/pubmesh/fanout"
	"github.com/pubmesh/pubmesh/internal/embedetcd"
	"github.com/pubmesh/pubmesh/internal/testredis"
	"github.com/pubmesh/pubmesh/ws"
)

// A gateway on a one-node cluster (a real etcd and redis-server): a
// WebSocket client subscribes, a backend publishes over HTTP, the client
// gets the message.
func Example() {
	ctx := context.Background()
	etcd, err := embedetcd.Start(embedetcd.Config{})
	if err != nil {
		log.Fatal(err)
	}
	defer etcd.Close()
	redis, err := testredis.Start()
	if err != nil {
		log.Fatal(err)
	}
	defer redis.Close()
	cli, err := discovery.Dial(ctx, discovery.EtcdConfig{Endpoints: []string{etcd.Endpoint()}})
	if err != nil {
		log.Fatal(err)
	}
	defer cli.Close()
	reg, err := discovery.New(cli, discovery.Config{Cluster: "example"})
	if err != nil {
		log.Fatal(err)
	}
	node, err := reg.Register(ctx, discovery.Node{ID: "n1", Addr: redis.Addr, State: discovery.StateReady, StartedAt: time.Now()}, discovery.RegisterOptions{})
	if err != nil {
		log.Fatal(err)
	}
	defer node.Close(ctx)

	client, err := fanout.New(ctx, fanout.Config{EtcdClient: cli, Cluster: "example", Overflow: fanout.Block})
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()
	h, err := ws.NewHandler(client, ws.Config{APIKeys: []string{"backend-key"}})
	if err != nil {
		log.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	sctx, stop := context.WithCancel(ctx)
	served := make(chan error, 1)
	go func() { served <- h.Serve(sctx, l) }()
	defer func() { stop(); <-served }()

	// A browser would connect with a JWT from `pubmesh token`.
	conn, _, err := websocket.DefaultDialer.Dial("ws://"+l.Addr().String()+"/ws?token=backend-key", nil)
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
	conn.WriteMessage(websocket.TextMessage, []byte(`{"op":"subscribe","channel":"news","id":1}`))
	_, reply, err := conn.ReadMessage()
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(string(reply))

	req, _ := http.NewRequest("POST", "http://"+l.Addr().String()+"/api/publish/news", strings.NewReader(`{"hello": "world"}`))
	req.Header.Set("Authorization", "Bearer backend-key")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		log.Fatal(err)
	}
	resp.Body.Close()
	fmt.Println("publish:", resp.Status)

	var m struct {
		Op, Channel string
		Data        any
	}
	if err := conn.ReadJSON(&m); err != nil {
		log.Fatal(err)
	}
	fmt.Println(m.Op, m.Channel, m.Data)
	// Output:
	// {"op":"ok","id":1}
	// publish: 200 OK
	// message news map[hello:world]
}
