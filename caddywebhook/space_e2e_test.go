package caddywebhook

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// With the disk under min_free_space, Caddy keeps serving: publishes get
// 507, pushes 503 without reaching the upstream, the registration API 507,
// deliveries wait; the metric and the log say why. Once space is freed
// everything resumes and what was queued before is delivered.
func TestLowDiskSpace(t *testing.T) {
	t.Setenv("E2E_ACCESS_KEY", e2eAccessKey)
	t.Setenv("E2E_ALICE_KEY", e2eAliceKey)
	var free atomic.Int64
	free.Store(10 << 30)
	freeSpace = func(string) (int64, error) { return free.Load(), nil }
	t.Cleanup(func() { freeSpace = nil })

	up, sub := newTestUpstream(t), newSubscriber(t)
	sub.fail.Store(true) // the first attempt fails; its retry is due while the disk is full
	global, logFile := globalOptions(t, t.TempDir(), fmt.Sprintf(`allow_private_targets
		min_free_space 1GiB
		retry 300ms 300ms 300ms
		subscription s {
			url %s
			events *
		}`, sub.URL))
	tester := startCaddy(t, global+fmt.Sprintf(`
http://localhost:9080 {
	handle /push {
		webhook_ingest {
			access_key {env.E2E_ACCESS_KEY}
			client alice {env.E2E_ALICE_KEY}
		}
		reverse_proxy %s
	}
	handle /publish {
		webhook_publish
	}
	handle /v1/webhooks* {
		webhook_api {
			dialect tiki
		}
	}
}`, up.addr()))
	post := func(path, body string) (int, http.Header, string) {
		t.Helper()
		res, err := tester.Client.Post(testBase+path, "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		return res.StatusCode, res.Header, strings.TrimSpace(string(b))
	}
	push := func() pushResult {
		return doPush(t, tester, "POST", "/push", map[string]string{
			"Authorization": "Token " + e2eAccessKey, "X-Webhook-Token": e2eAliceKey}, `{"n":1}`)
	}

	// Counters outlive a config in Caddy's registry (and a test under
	// -count): only their growth in this run counts.
	const retrying, storeFull = `caddy_webhooks_delivery_attempts_total{outcome="retrying"}`, `caddy_webhooks_ingest_pushes_total{outcome="store_full",scope=""}`
	retryingBefore, storeFullBefore := metricValue(t, retrying), metricValue(t, storeFull)
	if status, _, body := post("/publish", `{"event":"e","id":"before","data":{}}`); status != 202 {
		t.Fatalf("publish with room: %d %s", status, body)
	}
	waitFor(t, "the first, failing attempt", func() bool { return metricValue(t, retrying) > retryingBefore })
	free.Store(100 << 20)
	sub.fail.Store(false)
	waitFor(t, "the free-space gauge", func() bool { return metricValue(t, "caddy_webhooks_store_free_bytes") == 100<<20 })

	status, h, body := post("/publish", `{"event":"e","id":"while-full","data":{}}`)
	if status != http.StatusInsufficientStorage || h.Get("Retry-After") != "60" ||
		body != `{"error":"insufficient storage: try again later"}` {
		t.Fatalf("publish while full: %d %q %s", status, h.Get("Retry-After"), body)
	}
	res := push()
	if res.Status != http.StatusServiceUnavailable || res.Header.Get("Retry-After") != "60" || res.Envelope.Error != "service unavailable" {
		t.Fatalf("push while full: %d %s", res.Status, res.Raw)
	}
	assertEnvelopeHeaders(t, "push while full", res)
	if n := len(up.requests()); n != 0 {
		t.Fatalf("the upstream got %d pushes while the disk was full", n)
	}
	if status, _, body := post("/v1/webhooks", `{"uri":"`+sub.URL+`/x","event":"e"}`); status != http.StatusInsufficientStorage {
		t.Fatalf("registration while full: %d %s", status, body)
	}
	if v := metricValue(t, storeFull) - storeFullBefore; v != 1 {
		t.Fatalf("store_full pushes counted: %v", v)
	}
	time.Sleep(time.Second) // three retry periods: would the retry go out?
	if n := len(sub.received()); n != 0 {
		t.Fatalf("%d deliveries while the disk was full", n)
	}
	var lowLine string
	for _, line := range strings.Split(readFile(t, logFile), "\n") {
		if strings.Contains(line, "low on disk space") {
			lowLine = line
		}
	}
	if lowLine == "" {
		t.Fatal("the log does not say the store is low on disk space")
	}
	if !strings.Contains(lowLine, `"logger":"webhooks.store"`) {
		t.Fatalf("the store's own line is not logged as webhooks.store: %s", lowLine)
	}

	free.Store(5 << 30)
	waitFor(t, "the queued delivery once space is back", func() bool { return len(sub.received()) == 1 })
	if status, _, body := post("/publish", `{"event":"e","id":"after","data":{}}`); status != 202 {
		t.Fatalf("publish after space came back: %d %s", status, body)
	}
	if res := push(); res.Status != 200 || !res.Envelope.Success {
		t.Fatalf("push after space came back: %d %s", res.Status, res.Raw)
	}
	waitFor(t, "the new message", func() bool { return len(sub.received()) == 2 })
	for i, want := range []string{"before", "after"} {
		if id := sub.received()[i].Header.Get("Webhook-Id"); id != want {
			t.Errorf("delivery #%d is %q, want %q", i+1, id, want)
		}
	}
}
