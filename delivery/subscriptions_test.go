package delivery

import "testing"

// BenchmarkRegisterAmongMany is one registration (and its delete) while
// 100,000 other subscriptions are configured.
func BenchmarkRegisterAmongMany(b *testing.B) {
	te := newTestEngine(b, Config{Subscriptions: manySubscriptions(100_000)})
	reg := Subscription{ID: "sub_1", Tenant: "t", URL: "https://example.com/mine", Events: []string{"*"}}
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		if err := te.CreateSubscription(reg, 0); err != nil {
			b.Fatal(err)
		}
		if err := te.DeleteSubscription(reg.ID); err != nil {
			b.Fatal(err)
		}
	}
}
