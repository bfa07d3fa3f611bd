package ws_test

import (
	"context"
	"fmt"
	"log"
	"net/http"
	"strings"

	"github.com/gorilla/websocket"

	"github.com/pubmesh/pubmesh/pubmeshtest"
	"github.com/pubmesh/pubmesh/ws"
)

// A gateway on a one-node cluster (pubmeshtest runs a real etcd and a
// real node): a WebSocket client subscribes, a backend publishes over HTTP,
// the client gets the message.
func Example() {
	ctx := context.Background()
	cluster, err := pubmeshtest.Start(ctx, pubmeshtest.Options{Nodes: 1})
	if err != nil {
		log.Fatal(err)
	}
	defer cluster.Close()

	gw, err := ws.StartGateway(ctx, ws.GatewayConfig{
		Fanout:  cluster.FanoutConfig(),
		Handler: ws.Config{APIKeys: []string{"backend-key"}},
		Listen:  "127.0.0.1:0",
	})
	if err != nil {
		log.Fatal(err)
	}
	defer gw.Close()

	// A browser would connect with a JWT from `pubmesh token`.
	conn, _, err := websocket.DefaultDialer.Dial(gw.WebSocketURL()+"?token=backend-key", nil)
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

	req, _ := http.NewRequest("POST", gw.URL()+"api/publish/news", strings.NewReader(`{"hello": "world"}`))
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
