package main

import (
	"io"
	"slices"
	"testing"
)

func TestHoistFlags(t *testing.T) {
	t.Parallel()
	app := newApp(io.Discard, io.Discard)
	for _, tc := range []struct {
		in, want []string
	}{
		{[]string{"subscribe", "news", "--json"}, []string{"subscribe", "--json", "--", "news"}},
		{[]string{"subscribe", "news", "--etcd", "h:1", "sport", "-n", "3"}, []string{"subscribe", "--etcd", "h:1", "-n", "3", "--", "news", "sport"}},
		{[]string{"subscribe", "news", "--count=3"}, []string{"subscribe", "--count=3", "--", "news"}},
		{[]string{"publish", "news", "--", "-5"}, []string{"publish", "--", "news", "-5"}},
		{[]string{"publish", "news", "-"}, []string{"publish", "--", "news", "-"}},
		{[]string{"subscribe", "--json", "news"}, []string{"subscribe", "--json", "--", "news"}},
		{[]string{"nodes"}, []string{"nodes"}},
		{[]string{"nodes", "--watch"}, []string{"nodes", "--watch"}},
		{[]string{"nosuchcommand", "x", "--y"}, []string{"nosuchcommand", "x", "--y"}},
	} {
		got := hoistFlags(app, append([]string{"pubmesh"}, tc.in...))
		if want := append([]string{"pubmesh"}, tc.want...); !slices.Equal(got, want) {
			t.Errorf("hoistFlags(%q) = %q, want %q", tc.in, got, want)
		}
	}
}
