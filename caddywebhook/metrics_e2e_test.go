package caddywebhook

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// metricValue reads one sample from Caddy's admin /metrics.
func metricValue(t *testing.T, name string) float64 {
	t.Helper()
	_, b := adminRequest(t, "GET", "/metrics", "", nil)
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + ` (\S+)$`).FindSubmatch(b)
	if m == nil {
		return 0
	}
	v, _ := strconv.ParseFloat(string(m[1]), 64)
	return v
}

func TestMetricsOnCaddyAdmin(t *testing.T) {
	t.Setenv("E2E_ACCESS_KEY", e2eAccessKey)
	t.Setenv("E2E_ALICE_KEY", e2eAliceKey)
	up := newTestUpstream(t)
	good, down := newSubscriber(t), newSubscriber(t)
	gone := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusGone) }))
	defer gone.Close()
	down.Close() // connection refused: every attempt fails and is retried
	global, _ := globalOptions(t, t.TempDir(), fmt.Sprintf(`allow_private_targets
		retry 1h
		subscription good {
			url %s
			events *
		}
		subscription down {
			url %s
			events *
		}
		subscription gone {
			url %s
			events *
		}`, good.URL, down.URL, gone.URL))
	tester := startCaddy(t, global+fmt.Sprintf(`
http://localhost:9080 {
	handle /api/v1/webhook {
		reverse_proxy %s
		webhook_ingest {
			access_key {env.E2E_ACCESS_KEY}
			client alice {env.E2E_ALICE_KEY}
		}
	}
	handle /staging/webhook {
		reverse_proxy %s
		webhook_ingest {
			access_key {env.E2E_ACCESS_KEY}
			client alice {env.E2E_ALICE_KEY}
			scope staging
		}
	}
	handle /publish {
		webhook_publish
	}
}`, up.addr(), up.addr()))

	before := map[string]float64{}
	names := []string{
		`caddy_webhooks_published_messages_total`,
		`caddy_webhooks_delivery_attempts_total{outcome="delivered"}`,
		`caddy_webhooks_delivery_attempts_total{outcome="retrying"}`,
		`caddy_webhooks_delivery_attempt_duration_seconds_count{success="true"}`,
		`caddy_webhooks_ingest_pushes_total{outcome="accepted",scope=""}`,
		`caddy_webhooks_ingest_pushes_total{outcome="not_authorized",scope=""}`,
		`caddy_webhooks_ingest_pushes_total{outcome="accepted",scope="staging"}`,
	}
	for _, n := range names {
		before[n] = metricValue(t, n)
	}

	doPush(t, tester, "POST", "/api/v1/webhook", authHeaders(e2eAccessKey, e2eAliceKey), "{}")
	doPush(t, tester, "POST", "/api/v1/webhook", authHeaders("nope", e2eAliceKey), "{}")
	doPush(t, tester, "POST", "/staging/webhook", authHeaders(e2eAccessKey, e2eAliceKey), "{}")
	doPush(t, tester, "POST", "/staging/webhook", authHeaders(e2eAccessKey, e2eAliceKey), "{}")
	for i := 0; i < 3; i++ {
		req, _ := http.NewRequest("POST", testBase+"/publish", strings.NewReader(`{"event":"e","data":{}}`))
		res, err := tester.Client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
	}
	// good: 3 delivered plus the endpoint.disabled event; down: 3
	// retrying; gone: the first 410 disables it (one retrying attempt),
	// the rest wait for it to be re-enabled.
	waitFor(t, "the attempts", func() bool {
		return metricValue(t, names[1])-before[names[1]] == 4 && metricValue(t, names[2])-before[names[2]] >= 4
	})
	want := []float64{3, 4, -1, 4, 1, 1, 2}
	for i, n := range names {
		if got := metricValue(t, n) - before[n]; want[i] >= 0 && got != want[i] {
			t.Errorf("%s grew by %v, want %v", n, got, want[i])
		}
	}
	// Waiting: down's 3 + endpoint.disabled, gone's 3 + endpoint.disabled.
	waitFor(t, "the disabled endpoint", func() bool { return metricValue(t, "caddy_webhooks_endpoints_disabled") == 1 })
	waitFor(t, "the queue to settle", func() bool { return metricValue(t, "caddy_webhooks_queue_depth") == 8 })
	// Listed while no subscription pauses after store failures.
	if _, b := adminRequest(t, "GET", "/metrics", "", nil); !strings.Contains(string(b), "\ncaddy_webhooks_subscriptions_paused 0\n") {
		t.Error("caddy_webhooks_subscriptions_paused is not listed as 0")
	}
	// The store's files are allocated as badger writes them: tens of KB
	// here, where their sizes add up to hundreds of MB.
	if v := metricValue(t, "caddy_webhooks_store_bytes"); !(v > 0 && v < 64<<20) {
		t.Errorf("caddy_webhooks_store_bytes = %v", v)
	}
}
