package caddywebhook

import (
	"testing"
	"time"

	"github.com/hookgate/caddy-webhook/ingest"
)

// Handlers sharing a window may give its client different intervals: the
// admin API shows the window as the one that lets the client in first.
func TestWindowClaimsKeepShortestInterval(t *testing.T) {
	c := newWindowClaims()
	c.claim(ingest.Config{Clients: []ingest.Client{{Name: "acme", Key: "k1", Interval: time.Hour}, {Name: "zed", Key: "k2"}}})
	c.claim(ingest.Config{Clients: []ingest.Client{{Name: "acme", Key: "k1", Interval: 10 * time.Minute}}})
	c.claim(ingest.Config{Clients: []ingest.Client{{Name: "acme", Key: "k1", Interval: 30 * time.Minute}}})
	c.claim(ingest.Config{Scope: "staging", Clients: []ingest.Client{{Name: "acme", Key: "k3", Interval: time.Minute}}})
	for _, tc := range []struct {
		scope, client string
		want          time.Duration
		ok            bool
	}{
		{"", "acme", 10 * time.Minute, true},
		{"staging", "acme", time.Minute, true},
		{"", "zed", 0, true},
		{"", "gone", 0, false},
	} {
		if got, ok := c.interval(ingest.WindowID(tc.scope, tc.client)); got != tc.want || ok != tc.ok {
			t.Errorf("%q/%s: %v %v, want %v %v", tc.scope, tc.client, got, ok, tc.want, tc.ok)
		}
	}
	var none *windowClaims
	if _, ok := none.interval(ingest.WindowID("", "acme")); ok {
		t.Error("no config started, yet a client is configured")
	}
}
