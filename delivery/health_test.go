package delivery

import (
	"net/http"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/hookgate/caddy-webhook/internal/store"
)

// BenchmarkDisabledEndpoints is one metrics scrape's count of disabled
// endpoints among 100,000 subscriptions, one of them disabled.
func BenchmarkDisabledEndpoints(b *testing.B) {
	subs := manySubscriptions(100_000)
	te := newTestEngine(b, Config{Subscriptions: subs})
	te.healthMu.Lock()
	h, _ := te.healthOf(subs[7].ID)
	h.Disabled = true
	te.healthMu.Unlock()
	if n := te.DisabledEndpoints(); n != 1 { // loads every record once
		b.Fatalf("%d disabled", n)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		te.DisabledEndpoints()
	}
}

// The count covers static and registered subscriptions that are disabled
// now, and forgets a deleted one.
func TestDisabledEndpoints(t *testing.T) {
	gone := newReceiver(t, status(410))
	ok := newReceiver(t, nil)
	te := newTestEngine(t, Config{Subscriptions: []Subscription{sub("gone", gone.URL), sub("ok", ok.URL)}})
	reg := Subscription{ID: "sub_1", Tenant: "t", URL: gone.URL, Events: []string{"*"}}
	if err := te.CreateSubscription(reg, 0); err != nil {
		t.Fatal(err)
	}
	if n := te.DisabledEndpoints(); n != 0 {
		t.Fatalf("%d disabled before any delivery", n)
	}
	te.publishTo(t, "", StaticID("gone"))
	te.publishTo(t, "t", reg.ID)
	eventually(t, "two disabled", func() bool { return te.DisabledEndpoints() == 2 })
	if err := te.DeleteSubscription(reg.ID); err != nil {
		t.Fatal(err)
	}
	if n := te.DisabledEndpoints(); n != 1 {
		t.Fatalf("%d disabled after the delete, want 1", n)
	}
}

// Deliveries queued for a subscription that neither the config nor a
// registration serves any more are named at the reload that drops it and
// at every start, and only then.
func TestUnservedQueueIsWarned(t *testing.T) {
	down := newReceiver(t, status(http.StatusServiceUnavailable))
	up := newReceiver(t, nil)
	cfg := func(subs ...Subscription) Config {
		return Config{AllowPrivateTargets: true, Retry: []time.Duration{time.Hour}, Subscriptions: subs}
	}
	a, b := sub("a", down.URL), sub("b", up.URL)
	te := newTestEngine(t, cfg(a, b))
	for range 3 {
		te.publishTo(t, "", a.ID)
	}
	eventually(t, "a failing", func() bool { h, _ := te.Health(a.ID); return !h.FailingSince.IsZero() })
	warnings := func(logs *observer.ObservedLogs) []observer.LoggedEntry {
		return logs.FilterMessageSnippet("neither configured nor registered").All()
	}
	core, logs := observer.New(zapcore.InfoLevel)
	te.SetLogger(zap.New(core))

	if err := te.Configure(cfg(b)); err != nil {
		t.Fatal(err)
	}
	w := warnings(logs)
	if len(w) != 1 || w[0].ContextMap()["subscription"] != a.ID || w[0].ContextMap()["queued"] != int64(3) || w[0].Level != zapcore.WarnLevel {
		t.Fatalf("the reload that dropped a logged %v", logs.All())
	}
	te.healthMu.Lock()
	_, cached := te.health[a.ID]
	te.healthMu.Unlock()
	if cached {
		t.Fatal("the health of a dropped subscription is still cached")
	}
	if err := te.Configure(cfg(b)); err != nil {
		t.Fatal(err)
	}
	if len(warnings(logs)) != 1 {
		t.Fatalf("a reload that dropped nothing warned: %v", warnings(logs))
	}

	// A start warns again, as long as the queue waits.
	te.close()
	db, err := store.Open(te.dir, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	core, logs = observer.New(zapcore.InfoLevel)
	e := NewEngine(NewStore(db.DB), zap.New(core), te.clock)
	t.Cleanup(func() { e.Stop(); db.Close() })
	if err := e.Configure(cfg(b)); err != nil {
		t.Fatal(err)
	}
	if err := e.Start(); err != nil {
		t.Fatal(err)
	}
	if w := warnings(logs); len(w) != 1 || w[0].ContextMap()["subscription"] != a.ID || w[0].ContextMap()["queued"] != int64(3) {
		t.Fatalf("the start logged %v", logs.All())
	}
	// Back in the config: nothing to warn about.
	if err := e.Configure(cfg(a, b)); err != nil {
		t.Fatal(err)
	}
	if len(warnings(logs)) != 1 {
		t.Fatalf("a reload that brought it back warned: %v", warnings(logs))
	}
}

// The per-subscription counts keep apart IDs of which one starts with the
// other.
func TestQueueDepthsPerSubscription(t *testing.T) {
	down := newReceiver(t, status(http.StatusServiceUnavailable))
	te := newTestEngine(t, Config{Retry: []time.Duration{time.Hour}, Subscriptions: []Subscription{
		sub("a", down.URL, "x"), sub("ab", down.URL, "x", "y"),
	}})
	for _, event := range []string{"x", "x", "y"} {
		if _, err := te.Publish(msg(event, `{}`)); err != nil {
			t.Fatal(err)
		}
	}
	depths, err := te.store.QueueDepths()
	if err != nil || len(depths) != 2 || depths[StaticID("a")] != 2 || depths[StaticID("ab")] != 3 {
		t.Fatalf("depths %v, %v", depths, err)
	}
}
