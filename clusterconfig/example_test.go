package clusterconfig_test

import (
	"fmt"

	"github.com/pubmesh/pubmesh/clusterconfig"
)

func Example() {
	doc, err := clusterconfig.Parse([]byte(`
namespaces:
  - match: "chat.*"
    history_size: 100
    presence: true
gateway:
  max_subscriptions: 500
`))
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(doc.For("chat.lobby").HistorySize, doc.For("news").HistorySize)
	fmt.Println(doc.Gateway.MaxSubscriptions, doc.Gateway.SendQueue)
	for _, c := range clusterconfig.Diff(clusterconfig.Defaults(), doc) {
		fmt.Println(c)
	}

	_, err = clusterconfig.Parse([]byte(`gateway: {max_subscriptions: -1, send_queue: 0}`))
	fmt.Println(err)
	// Output:
	// 100 0
	// 500 256
	// ~ gateway.max_subscriptions: 100 -> 500
	// + namespaces[0].allow_publish: "token"
	// + namespaces[0].allow_subscribe: "token"
	// + namespaces[0].history_size: 100
	// + namespaces[0].history_ttl: "1h0m0s"
	// + namespaces[0].join_leave: false
	// + namespaces[0].match: "chat.*"
	// + namespaces[0].max_publish_bytes: 32768
	// + namespaces[0].presence: true
	// clusterconfig: 2 problem(s):
	//   gateway.max_subscriptions: -1: must be between 0 and 1000000
	//   gateway.send_queue: 0: must be between 1 and 65536
}
