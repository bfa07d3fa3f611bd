package bench_test

import (
	"context"
	"fmt"
	"time"

	"github.com/pubmesh/pubmesh/bench"
)

// Run measures plain go-redis with hand-made pipelines (row 1) and pubmesh
// over three nodes (row 5) side by side, on redis-servers and an embedded
// etcd it starts and stops itself. The figures vary from run to run; what
// does not is that nothing is lost and no server is left behind.
func ExampleRun() {
	rep, err := bench.Run(context.Background(), bench.Config{
		Rows:        []int{1, 5},
		Channels:    8,
		Subscribers: 2,
		Publishers:  32,
		Duration:    300 * time.Millisecond,
		SkipScaling: true,
		SkipLatency: true,
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	for _, r := range rep.Rows {
		fmt.Printf("row %d %s: lost %d, error %q\n", r.Row, r.Label, r.Lost, r.Err)
	}
	fmt.Println("redis-servers left running:", len(rep.ServersLeft))
	// Output:
	// row 1 go-redis, 1 node, hand-pipelined: lost 0, error ""
	// row 5 pubmesh, 3 nodes, 1 Publish per call: lost 0, error ""
	// redis-servers left running: 0
}
