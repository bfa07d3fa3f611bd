package bench

import (
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestHistogramQuantiles(t *testing.T) {
	t.Parallel()
	var h histogram
	var all []int64
	r := rand.New(rand.NewPCG(1, 2))
	for range 100000 {
		v := int64(r.ExpFloat64() * 300e3) // ~300 µs mean, long tail
		all = append(all, v)
		h.add(v)
	}
	slices.Sort(all)
	for _, q := range []float64{0.5, 0.99, 0.999} {
		want := all[int(q*float64(len(all)))-1]
		got := int64(h.quantile(q))
		if d := float64(got-want) / float64(want); d > 0.02 || d < -0.02 {
			t.Errorf("q%g: got %d, want %d (±2%%)", q, got, want)
		}
	}
	var empty histogram
	if empty.quantile(0.5) != 0 {
		t.Error("empty histogram has a median")
	}
}

func TestHistogramBuckets(t *testing.T) {
	t.Parallel()
	prev := -1
	for _, v := range []int64{-5, 0, 1, 127, 128, 129, 1000, 1 << 20, 1<<40 + 12345, 1<<62 + 1} {
		b := bucketOf(v)
		if b < prev || b >= len(histogram{}.counts) {
			t.Fatalf("bucket of %d is %d (previous %d)", v, b, prev)
		}
		prev = b
		if v > 128 {
			if got := valueOf(b); float64(got-v)/float64(v) > 0.016 || float64(v-got)/float64(v) > 0.016 {
				t.Errorf("value of bucket %d is %d, from %d", b, got, v)
			}
		}
	}
}

func TestPayload(t *testing.T) {
	t.Parallel()
	buf := make([]byte, MinPayload)
	ns := time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC).UnixNano()
	fillPayload(buf, 0, true)
	fillPayload(buf, ns, false)
	if buf[0] != '"' || buf[len(buf)-1] != '"' || strings.ContainsAny(string(buf[1:len(buf)-1]), `"\`) {
		t.Fatalf("payload %q is not a JSON string", buf)
	}
	if got, ok := stampOf(buf); !ok || got != ns {
		t.Errorf("stampOf(%q) = %d, %v; want %d", buf, got, ok, ns)
	}
	if got, ok := stampOf(string(buf)); !ok || got != ns {
		t.Errorf("stampOf(string) = %d, %v", got, ok)
	}
	for _, bad := range []string{"", `"123"`, "x1234567890123456789x", `"12345678901234567a9x"`} {
		if _, ok := stampOf(bad); ok {
			t.Errorf("stampOf(%q) ok", bad)
		}
	}
}

func TestParseCPU(t *testing.T) {
	t.Parallel()
	info := "# CPU\r\nused_cpu_sys:1.500000\r\nused_cpu_user:0.250001\r\nused_cpu_sys_children:9.000000\r\n"
	d, err := parseCPU(info)
	if err != nil || d != 1750001*time.Microsecond {
		t.Fatalf("parseCPU = %v, %v", d, err)
	}
	if _, err := parseCPU("# CPU\r\n"); err == nil {
		t.Error("no error without the fields")
	}
}

func TestMarkdownAndChart(t *testing.T) {
	t.Parallel()
	rep := &Report{Started: time.Now(), Finished: time.Now(), Config: workloadOf(DefaultConfig())}
	for i := 1; i <= 7; i++ {
		rep.Rows = append(rep.Rows, Result{Row: i, Key: "k", Label: "target", Nodes: 3, PublishedPerSec: float64(i) * 1e5,
			DeliveredPerSec: float64(i) * 4e5, P50us: 100, P99us: 900, P999us: 2000, RedisCPUPerMsgUs: 1, ClientCPUPerMsgUs: 2})
	}
	rep.Rows[6] = Result{Row: 7, Label: "broken", Err: "no | gateway"}
	rep.Scaling = []Result{{Nodes: 1, DeliveredPerSec: 1e5}, {Nodes: 2, DeliveredPerSec: 2e5}}
	rep.Latency = []Result{{LoadFraction: 0.5, OfferedRate: 1e5, P99us: 1500}}
	rep.computeRatios()
	var b strings.Builder
	rep.Markdown(&b)
	md := b.String()
	for _, want := range []string{
		"| 5 target | 500.0k | 2.00M | 0 | 0.10 ms | 0.90 ms | 2.00 ms | 1.00 | 2.00 |",
		"| 7 broken | error: no / gateway ||||||||",
		"| row 5 delivered/s ÷ row 1 | 5.00× | >= 1× | yes |",
		"| row 5 Redis CPU/msg ÷ row 3 | 1.00× | <= 0.35× | **no** |",
		"| pubmesh p99 at 50% of max | 1.50ms | <= 2ms | yes |",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q:\n%s", want, md)
		}
	}
	png, err := rep.Chart()
	if err != nil || !strings.HasPrefix(string(png), "\x89PNG") {
		t.Fatalf("chart: %v", err)
	}
}
