package delivery

import (
	"fmt"
	"testing"
)

// BenchmarkRegisterAmongMany is one registration (and its delete) while
// 100,000 other subscriptions are configured.
func BenchmarkRegisterAmongMany(b *testing.B) {
	subs := make([]Subscription, 100_000)
	for i := range subs {
		subs[i] = sub(fmt.Sprintf("s%d", i), "https://example.com/hook")
	}
	te := newTestEngine(b, Config{Subscriptions: subs})
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
