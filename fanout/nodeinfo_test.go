package fanout

import (
	"reflect"
	"testing"
)

func TestParseInfo(t *testing.T) {
	const info = "# Server\r\nredis_version:7.2.4\r\nrun_id:abc\r\n\r\n# Memory\r\nused_memory_human:1.02M\r\nmaxmemory_human:0B\r\n# Clients\r\nconnected_clients:3\r\n"
	for _, tc := range []struct {
		name string
		keep []string
		want map[string]string
	}{
		{"kept fields", []string{"redis_version", "connected_clients", "absent"}, map[string]string{"redis_version": "7.2.4", "connected_clients": "3"}},
		{"all", nil, map[string]string{"redis_version": "7.2.4", "run_id": "abc", "used_memory_human": "1.02M", "maxmemory_human": "0B", "connected_clients": "3"}},
	} {
		if got := parseInfo(info, tc.keep); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
}
