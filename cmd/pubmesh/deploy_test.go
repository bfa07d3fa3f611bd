package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

// TestVersion: `pubmesh version` says what the binary is, in text and JSON.
func TestVersion(t *testing.T) {
	t.Parallel()
	r := runPubmesh(t, 10*time.Second, "version")
	if r.code != 0 {
		t.Fatalf("version exited %d: %s", r.code, r.stderr)
	}
	for _, want := range []string{"pubmesh 0.1.0", "commit:", runtime.Version(), "redis:    7.0 or later (tested with 7.0.15)"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("version output %q lacks %q", r.stdout, want)
		}
	}
	r = runPubmesh(t, 10*time.Second, "version", "--json")
	var b struct {
		Version, Commit, Go, Platform string
		RedisMin                      string `json:"redis_min"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &b); err != nil || b.Version != "0.1.0" || b.Commit == "" || b.Go != runtime.Version() ||
		b.Platform != runtime.GOOS+"/"+runtime.GOARCH || b.RedisMin != "7.0" {
		t.Errorf("version --json: %q (%v)", r.stdout, err)
	}
}

// TestSystemdUnits: the units in deploy/systemd pass `systemd-analyze
// verify` (with ExecStart pointing at this build), without a warning, and
// keep their hardening and their secrets out of the command line.
func TestSystemdUnits(t *testing.T) {
	t.Parallel()
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze is not installed (make deps installs it)")
	}
	dir := t.TempDir()
	src := filepath.Join("..", "..", "deploy", "systemd")
	units := map[string]string{"pubmesh-node@.service": "pubmesh-node@7000.service", "pubmesh-gateway.service": "pubmesh-gateway.service"}
	var paths []string
	for name, as := range units {
		b, err := os.ReadFile(filepath.Join(src, name))
		if err != nil {
			t.Fatal(err)
		}
		unit := string(b)
		for _, want := range []string{"DynamicUser=yes", "NoNewPrivileges=yes", "ProtectSystem=strict", "LoadCredential=redis-password:",
			"--redis-password-file ${CREDENTIALS_DIRECTORY}/redis-password", "CapabilityBoundingSet=\n"} {
			if !strings.Contains(unit, want) {
				t.Errorf("%s lacks %q", name, want)
			}
		}
		for _, line := range strings.Split(unit, "\n") {
			if strings.HasPrefix(line, "ExecStart=") && (strings.Contains(line, "--jwt-secret ") || strings.Contains(line, "--api-key ") || strings.Contains(line, "PASSWORD")) {
				t.Errorf("%s puts a secret on the command line: %s", name, line)
			}
		}
		p := filepath.Join(dir, as)
		if err := os.WriteFile(p, []byte(strings.ReplaceAll(unit, "/usr/local/bin/pubmesh", binary)), 0o644); err != nil {
			t.Fatal(err)
		}
		paths = append(paths, p)
	}
	cmd := exec.Command(analyze, append([]string{"verify"}, paths...)...)
	out, err := cmd.CombinedOutput()
	if err != nil || len(strings.TrimSpace(string(out))) > 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
}
