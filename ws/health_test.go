package ws

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/pubmesh/pubmesh/discovery"
)

// TestHealthzCountsOnlyWorkingNodes: /healthz reports the nodes this
// gateway is subscribed on and can publish to, not registry entries: a
// ready entry whose address points nowhere (a closed port) leaves it 503,
// with a body that says why, per node; a real node makes it 200.
func TestHealthzCountsOnlyWorkingNodes(t *testing.T) {
	t.Parallel()
	g := newGW(t, Config{Insecure: true}, gwOptions{nodes: -1, fanout: fanoutQuick()})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	nowhere := l.Addr().String()
	l.Close()
	r, err := g.reg.Register(context.Background(), discovery.Node{
		ID: "nowhere", Addr: nowhere, State: discovery.StateReady, StartedAt: time.Now(), Version: "test", RunID: "x",
	}, discovery.RegisterOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close(context.Background()) })
	waitFor(t, 20*time.Second, "the gateway to see the ready entry", func() bool { return len(g.client.Nodes().Ready()) == 1 })
	// The conn to it keeps failing: /healthz must stay 503, and say why.
	for end := time.Now().Add(2 * time.Second); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		if code, body := g.get(t, "/healthz", ""); code != 503 {
			t.Fatalf("healthz with only a node that points nowhere: %d %v", code, body)
		}
	}
	code, body := g.get(t, "/healthz", "")
	if body["ready_nodes"] != 0.0 || nodeField(body, "nowhere", "subscribed") != false || nodeField(body, "nowhere", "error") == nil {
		t.Fatalf("healthz body with only a node that points nowhere: %d %v", code, body)
	}
	g.addNode(t, "n1")
	waitFor(t, 20*time.Second, "healthz to turn 200", func() bool { code, _ := g.get(t, "/healthz", ""); return code == 200 })
	code, body = g.get(t, "/healthz", "")
	if body["ready_nodes"] != 1.0 || nodeField(body, "n1", "publishable") != true || nodeField(body, "nowhere", "publishable") != false {
		t.Fatalf("healthz with a real node and one that points nowhere: %d %v", code, body)
	}
}

// nodeField is field of node id in a /healthz body, or nil.
func nodeField(body map[string]any, id, field string) any {
	nodes, _ := body["nodes"].([]any)
	for _, n := range nodes {
		if m, _ := n.(map[string]any); m != nil && m["id"] == id {
			return m[field]
		}
	}
	return nil
}
