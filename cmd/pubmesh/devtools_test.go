package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// pubmesh runs pubmesh-dev for dev and bench: found next to it (the other
// tests go through that), else on PATH, else a clear error.
func TestDevtoolsHandOver(t *testing.T) {
	t.Parallel()
	data, err := os.ReadFile(binary)
	if err != nil {
		t.Fatal(err)
	}
	alone := filepath.Join(t.TempDir(), "pubmesh") // no pubmesh-dev beside it
	if err := os.WriteFile(alone, data, 0o755); err != nil {
		t.Fatal(err)
	}
	run := func(path string, args ...string) (int, string, string) {
		t.Helper()
		cmd := exec.Command(alone, args...)
		cmd.Env = append(cleanEnv(), "PATH="+path)
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		return code, stdout.String(), stderr.String()
	}
	for _, name := range []string{"dev", "bench"} {
		code, _, stderr := run("/usr/bin:/bin", name, "--help")
		if code != 1 || !strings.Contains(stderr, "pubmesh "+name+" is in pubmesh-dev, which is neither next to this pubmesh nor on PATH") {
			t.Errorf("%s without pubmesh-dev: exit %d, stderr %q", name, code, stderr)
		}
	}
	// On PATH, with the arguments as given (a value that looks like an
	// argument stays with its flag).
	code, _, stderr := run(filepath.Dir(binary)+":/usr/bin:/bin", "dev", "--nodes", "0")
	if code != 2 || !strings.Contains(stderr, "invalid --nodes") {
		t.Errorf("dev --nodes 0 through PATH: exit %d, stderr %q", code, stderr)
	}
}
