package api

import (
	"fmt"
	"testing"
	"time"

	"github.com/hookgate/caddy-webhook/delivery"
)

// BenchmarkListAmongMany is one tenant listing its webhooks while 100,000
// subscriptions of others are configured.
func BenchmarkListAmongMany(b *testing.B) {
	e := newEnv(b, time.Second)
	others := make([]delivery.Subscription, 100_000)
	for i := range others {
		others[i] = delivery.Subscription{ID: fmt.Sprintf("static:s%d", i), Name: fmt.Sprintf("s%d", i), URL: "https://example.com/hook", Events: []string{"*"}}
	}
	if err := e.engine.Configure(delivery.Config{AllowPrivateTargets: true, Subscriptions: others}); err != nil {
		b.Fatal(err)
	}
	expect(b, e.do(e.tiki, "s", "POST", "/v1/webhooks", `{"uri":"https://example.com/mine","event":"order.status"}`), 200, "")
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		expect(b, e.do(e.tiki, "s", "GET", "/v1/webhooks", ""), 200, `{"data":[{"uri":"https://example.com/mine","event":"order.status"}]}`)
	}
}
