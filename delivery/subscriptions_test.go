package delivery

import (
	"testing"
	"time"
)

// BenchmarkRegisterAmongMany is one registration (and its delete) while
// 100,000 other subscriptions are configured, all of tenant "": from
// another tenant, and from the same one, whose list is copied.
func BenchmarkRegisterAmongMany(b *testing.B) {
	te := newTestEngine(b, Config{Subscriptions: manySubscriptions(100_000)})
	te.waitLanesIdle(b)
	for _, tenant := range []string{"t", ""} {
		b.Run("tenant="+tenant, func(b *testing.B) {
			reg := Subscription{ID: "sub_1", Tenant: tenant, URL: "https://example.com/mine", Events: []string{"*"}}
			b.ReportAllocs()
			for range b.N {
				if err := te.CreateSubscription(reg, 0); err != nil {
					b.Fatal(err)
				}
				if err := te.DeleteSubscription(reg.ID); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// waitLanesIdle waits for the lanes that the engine's start woke (one
// per subscription) to have looked at their queues, so that a benchmark
// measures its own work.
func (te *testEngine) waitLanesIdle(b *testing.B) {
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(10 * time.Millisecond) {
		te.mu.Lock()
		busy := te.activeLanes + len(te.waitingLanes)
		te.mu.Unlock()
		if busy == 0 {
			return
		}
		if time.Now().After(deadline) {
			b.Fatalf("%d lanes still busy", busy)
		}
	}
}
