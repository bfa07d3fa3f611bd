package broker

import (
	"strings"
	"testing"
)

// The redis-server child does not inherit variables that may hold secrets.
func TestChildEnvDropsSecrets(t *testing.T) {
	t.Setenv("PUBMESH_REDIS_PASSWORD", "s3cret")
	t.Setenv("PUBMESH_ETCD_PASSWORD", "s3cret")
	t.Setenv("PUBMESH_JWT_SECRET", "s3cret")
	t.Setenv("PUBMESH_LOG_LEVEL", "debug")
	env := strings.Join(childEnv(), "\n")
	if strings.Contains(env, "s3cret") {
		t.Errorf("child environment holds a secret:\n%s", env)
	}
	if !strings.Contains(env, "PUBMESH_LOG_LEVEL=debug") {
		t.Error("child environment lost an ordinary variable")
	}
}
