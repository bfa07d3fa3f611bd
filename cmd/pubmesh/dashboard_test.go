package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"
)

// TestGrafanaDashboard: every metric the dashboard in deploy/grafana
// queries exists on a running cluster (`pubmesh dev`: nodes, a gateway and
// its fanout client on one /metrics), so no panel is silently empty.
func TestGrafanaDashboard(t *testing.T) {
	t.Parallel()
	raw, err := os.ReadFile(filepath.Join("..", "..", "deploy", "grafana", "pubmesh.json"))
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Title   string
			Targets []struct{ Expr string }
		}
	}
	if err := json.Unmarshal(raw, &dash); err != nil {
		t.Fatalf("dashboard JSON: %v", err)
	}
	metricName := regexp.MustCompile(`pubmesh_[a-z0-9_]+`)
	wanted := map[string][]string{} // metric -> panels
	for _, p := range dash.Panels {
		for _, tg := range p.Targets {
			for _, m := range metricName.FindAllString(tg.Expr, -1) {
				wanted[m] = append(wanted[m], p.Title)
			}
		}
	}
	if len(wanted) < 20 {
		t.Fatalf("the dashboard queries only %d metrics", len(wanted))
	}

	base := freePorts(t, 2)
	etcdAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	gwAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	metricsAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	p := startPubmesh(t, "dev", "--nodes", "2", "--etcd-listen", etcdAddr, "--base-port", fmt.Sprint(base),
		"--data-dir", t.TempDir(), "--cluster", "dashtest", "--gateway-listen", gwAddr, "--metrics-listen", metricsAddr)
	p.out.wait(t, `^cluster ready: 2 nodes`, 60*time.Second)
	// Some traffic, so that histograms and labelled series have samples.
	var have map[string]bool
	deadline := time.Now().Add(30 * time.Second)
	for {
		if resp, err := http.Post("http://"+gwAddr+"/api/publish/demo.dash", "application/json", strings.NewReader(`"x"`)); err == nil {
			resp.Body.Close()
		}
		have = scrapeNames(t, "http://"+metricsAddr+"/metrics")
		missing := missingMetrics(wanted, have)
		if len(missing) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("metrics the dashboard queries that a running cluster does not export: %v", missing)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

func missingMetrics(wanted map[string][]string, have map[string]bool) []string {
	var out []string
	for m, panels := range wanted {
		if !have[m] {
			out = append(out, m+" (panel "+panels[0]+")")
		}
	}
	sort.Strings(out)
	return out
}

// scrapeNames returns the sample names at url (histogram series included).
func scrapeNames(t *testing.T, url string) map[string]bool {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	names := map[string]bool{}
	for _, line := range strings.Split(string(b), "\n") {
		if line == "" || line[0] == '#' {
			continue
		}
		if i := strings.IndexAny(line, "{ "); i > 0 {
			names[line[:i]] = true
		}
	}
	return names
}
