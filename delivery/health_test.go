package delivery

import "testing"

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
