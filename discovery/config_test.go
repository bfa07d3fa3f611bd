package discovery_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pubmesh/pubmesh/clusterconfig"
	"github.com/pubmesh/pubmesh/discovery"
	"github.com/pubmesh/pubmesh/internal/tcpproxy"
)

func tree(t *testing.T, yaml string) map[string]any {
	t.Helper()
	m, err := clusterconfig.Decode([]byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestPutConfigCompareAndSwap(t *testing.T) {
	f := setup(t)
	ctx := context.Background()
	cur, err := f.reg.Config(ctx)
	if err != nil || cur.Revision != 0 || cur.Doc == nil {
		t.Fatalf("no config yet: %+v, %v", cur, err)
	}
	rev1, err := f.reg.PutConfig(ctx, tree(t, "gateway: {max_subscriptions: 10}"), 0, discovery.ConfigChange{Author: "a"})
	if err != nil {
		t.Fatal(err)
	}
	// Two writers that both read rev1: exactly one wins.
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = f.reg.PutConfig(ctx, tree(t, "gateway: {max_subscriptions: 20}"), rev1, discovery.ConfigChange{Author: "b"})
		}()
	}
	wg.Wait()
	var conflicts int
	for _, err := range errs {
		var ce *discovery.ConflictError
		switch {
		case err == nil:
		case errors.Is(err, discovery.ErrConfigConflict) && errors.As(err, &ce) && ce.Expected == rev1 && ce.Current > rev1:
			conflicts++
		default:
			t.Errorf("unexpected error %v", err)
		}
	}
	if conflicts != 1 {
		t.Errorf("%d conflicts among two writers of the same revision, want 1 (%v)", conflicts, errs)
	}
	// A bad document is never written.
	_, err = f.reg.PutConfig(ctx, tree(t, "gateway: {max_subscriptions: -5}"), 0, discovery.ConfigChange{})
	var ve *clusterconfig.ValidationError
	if !errors.As(err, &ve) {
		t.Errorf("bad document: err = %v", err)
	}
	hist, err := f.reg.ConfigHistory(ctx)
	if err != nil || len(hist) != 2 || hist[0].Revision != rev1 || hist[0].Author != "a" || hist[1].Previous != rev1 {
		t.Fatalf("history = %+v, %v", hist, err)
	}
	at, err := f.reg.ConfigAt(ctx, rev1)
	if err != nil || string(at.Document) != `{"gateway":{"max_subscriptions":10}}` {
		t.Errorf("ConfigAt(%d) = %s, %v", rev1, at.Document, err)
	}
	if _, err := f.reg.ConfigAt(ctx, rev1+100); err == nil {
		t.Error("ConfigAt of an unknown revision succeeded")
	}
}

func TestConfigWatcher(t *testing.T) {
	f := setup(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	changes := make(chan discovery.AppliedConfig, 10)
	w, err := f.reg.WatchConfig(ctx, discovery.ConfigWatchOptions{OnChange: func(_, cur discovery.AppliedConfig) { changes <- cur }})
	if err != nil {
		t.Fatal(err)
	}
	if c := w.Current(); c.Revision != 0 || c.Doc.Gateway.MaxSubscriptions != clusterconfig.DefaultGateway.MaxSubscriptions {
		t.Fatalf("start: %+v", c)
	}
	next := func(what string) discovery.AppliedConfig {
		t.Helper()
		select {
		case c := <-changes:
			return c
		case <-time.After(time.Second):
			t.Fatalf("%s: not applied within 1s", what)
		}
		return discovery.AppliedConfig{}
	}
	rev, err := f.reg.PutConfig(ctx, tree(t, "gateway: {max_subscriptions: 7}"), 0, discovery.ConfigChange{})
	if err != nil {
		t.Fatal(err)
	}
	if c := next("put"); c.Revision != rev || c.Doc.Gateway.MaxSubscriptions != 7 || w.Current().Revision != rev {
		t.Fatalf("after put: %+v", c)
	}
	// Garbage written behind pubmesh's back is ignored and counted.
	for _, junk := range []string{"{not json", `{"gateway":{"max_subscriptions":-1}}`} {
		if _, err := f.cli.Put(ctx, "/pubmesh/"+f.reg.Cluster()+"/config", junk); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(time.Second)
	for w.BadRevisions() != 2 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if w.BadRevisions() != 2 || w.Current().Revision != rev {
		t.Fatalf("after garbage: bad %d, current %+v", w.BadRevisions(), w.Current())
	}
	// A new watcher that starts on the garbage runs the newest good write.
	w2, err := f.reg.WatchConfig(ctx, discovery.ConfigWatchOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if c := w2.Current(); c.Revision != rev || c.Doc.Gateway.MaxSubscriptions != 7 || w2.BadRevisions() != 1 {
		t.Errorf("watcher started on garbage: %+v, bad %d", c, w2.BadRevisions())
	}
	// Deleting the key brings the defaults back.
	if _, err := f.cli.Delete(ctx, "/pubmesh/"+f.reg.Cluster()+"/config"); err != nil {
		t.Fatal(err)
	}
	if c := next("delete"); c.Revision != 0 || c.Doc.Gateway.MaxSubscriptions != 100 {
		t.Fatalf("after delete: %+v", c)
	}
	w.Close()
	w2.Close()
}

// While etcd cannot be reached the watcher keeps the last good
// configuration; once it can, it catches up with what was written
// meanwhile.
func TestConfigWatcherOutage(t *testing.T) {
	f := setup(t)
	ctx := context.Background()
	rev1, err := f.reg.PutConfig(ctx, tree(t, "gateway: {send_queue: 100}"), 0, discovery.ConfigChange{})
	if err != nil {
		t.Fatal(err)
	}
	link := tcpproxy.New(t, strings.TrimPrefix(f.srv.Endpoint(), "http://"))
	cli, err := discovery.Dial(ctx, discovery.EtcdConfig{Endpoints: []string{"http://" + link.Addr()}, DialTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	reg, err := discovery.New(cli, discovery.Config{Cluster: f.reg.Cluster()})
	if err != nil {
		t.Fatal(err)
	}
	w, err := reg.WatchConfig(ctx, discovery.ConfigWatchOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	link.Cut()
	rev2, err := f.reg.PutConfig(ctx, tree(t, "gateway: {send_queue: 200}"), rev1, discovery.ConfigChange{})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second)
	if c := w.Current(); c.Revision != rev1 || c.Doc.Gateway.SendQueue != 100 {
		t.Fatalf("during the outage: %+v", c)
	}
	link.Heal()
	deadline := time.Now().Add(10 * time.Second)
	for w.Current().Revision != rev2 {
		if time.Now().After(deadline) {
			t.Fatalf("revision %d not applied 10s after etcd came back: %+v", rev2, w.Current())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if w.Current().Doc.Gateway.SendQueue != 200 {
		t.Errorf("after the outage: %+v", w.Current().Doc.Gateway)
	}
}
