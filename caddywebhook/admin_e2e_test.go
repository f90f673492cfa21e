package caddywebhook

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func admin(t *testing.T, method, path string) (int, string) {
	t.Helper()
	status, b := adminRequest(t, method, path, "", nil)
	return status, strings.TrimSpace(string(b))
}

// flakyReceiver answers failCode until healthy is set, then 204; seen,
// when not nil, is shown every request first.
func flakyReceiver(t *testing.T, failCode int, seen func(*http.Request)) (*httptest.Server, *atomic.Bool) {
	healthy := new(atomic.Bool)
	rcv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if seen != nil {
			seen(r)
		}
		if healthy.Load() {
			w.WriteHeader(204)
			return
		}
		w.WriteHeader(failCode)
	}))
	t.Cleanup(rcv.Close)
	return rcv, healthy
}

// waitDisabled waits for the admin API to show the subscription disabled.
func waitDisabled(t *testing.T, id string) {
	t.Helper()
	waitFor(t, id+" to be disabled", func() bool {
		_, body := admin(t, "GET", "/webhooks/subscriptions/"+id)
		return strings.Contains(body, `"disabled":true`)
	})
}

func TestAdminAPI(t *testing.T) {
	rcv, healthy := flakyReceiver(t, http.StatusGone, nil)
	global, _ := globalOptions(t, t.TempDir(), fmt.Sprintf(`allow_private_targets
		retry 1s
		subscription shop {
			url %s/hook?key=admin-secret-q
			events order.status
			secret_header X-Event-Secret admin-secret-h
			token admin-secret-t
		}`, rcv.URL))
	tester := startCaddy(t, global+"\nhttp://localhost:9080 {\n\twebhook_publish\n}\n")
	for i := 0; i < 2; i++ {
		publish(t, tester.Client, "POST", `{"event":"order.status","data":{"n":1}}`)
	}
	waitDisabled(t, "static:shop")

	st, body := admin(t, "GET", "/webhooks/subscriptions")
	var subs []map[string]any
	if err := json.Unmarshal([]byte(body), &subs); st != 200 || err != nil || len(subs) != 1 {
		t.Fatalf("list: %d %s", st, body)
	}
	s := subs[0]
	if s["id"] != "static:shop" || s["source"] != "static" || s["queued"] != float64(2) ||
		!strings.HasSuffix(s["url"].(string), "/hook?REDACTED") || fmt.Sprint(s["auth"]) != "[secret_header:X-Event-Secret token]" {
		t.Fatalf("subscription %v", s)
	}
	if strings.Contains(body, "admin-secret") {
		t.Fatalf("secrets in the admin answer: %s", body)
	}

	// Re-enable with the receiver fixed: the kept deliveries go out.
	healthy.Store(true)
	if st, body := admin(t, "POST", "/webhooks/subscriptions/static:shop/enable"); st != 200 || body != `{"enabled":true,"subscription":"static:shop"}` {
		t.Fatalf("enable: %d %s", st, body)
	}
	waitFor(t, "the queue to drain", func() bool {
		_, body := admin(t, "GET", "/webhooks/subscriptions/static:shop")
		return strings.Contains(body, `"queued":0`)
	})

	assertAdminStatuses(t, []adminCase{
		{"GET", "/webhooks/subscriptions/static:nope", 404},
		{"POST", "/webhooks/subscriptions/static:nope/enable", 404},
		{"GET", "/webhooks/subscriptions/static:shop/enable", 405},
		{"POST", "/webhooks/subscriptions", 405},
		{"GET", "/webhooks/failed?limit=zero", 400},
		{"GET", "/webhooks/elsewhere", 404},
		{"POST", "/webhooks/subscriptions/static:shop/launch", 404},
	})
	// A static subscription's bare name is pointed at its ID.
	for _, path := range []string{"/webhooks/subscriptions/shop", "/webhooks/subscriptions/shop/enable"} {
		method := map[bool]string{true: "POST", false: "GET"}[strings.HasSuffix(path, "/enable")]
		if st, body := admin(t, method, path); st != 404 ||
			body != `{"error":"no subscription shop; the static subscription shop is static:shop"}` {
			t.Errorf("%s %s: %d %s", method, path, st, body)
		}
	}
}

// adminCase is a request the admin API must answer with status.
type adminCase struct {
	method, path string
	status       int
}

func assertAdminStatuses(t *testing.T, cases []adminCase) {
	t.Helper()
	for _, c := range cases {
		if st, body := admin(t, c.method, c.path); st != c.status {
			t.Errorf("%s %s: %d %s, want %d", c.method, c.path, st, body, c.status)
		}
	}
}

// Failed deliveries are listed and can be redelivered.
func TestAdminFailedAndRedeliver(t *testing.T) {
	var hits atomic.Int32
	rcv, healthy := flakyReceiver(t, 500, func(*http.Request) { hits.Add(1) })
	global, _ := globalOptions(t, t.TempDir(), fmt.Sprintf(`allow_private_targets
		retry 10ms
		subscription flaky {
			url %s
			events *
		}`, rcv.URL))
	tester := startCaddy(t, global+"\nhttp://localhost:9080 {\n\twebhook_publish\n}\n")
	publish(t, tester.Client, "POST", `{"event":"e","id":"m-1","data":{}}`)
	publish(t, tester.Client, "POST", `{"event":"e","id":"m-2","data":{}}`)
	waitFor(t, "both deliveries to fail for good", func() bool {
		_, body := admin(t, "GET", "/webhooks/failed")
		return strings.Contains(body, `"message_id":"m-1"`) && strings.Contains(body, `"message_id":"m-2"`)
	})
	_, body := admin(t, "GET", "/webhooks/failed?subscription=static:flaky")
	if !strings.Contains(body, `"attempts":2`) || !strings.Contains(body, `"last_status":500`) {
		t.Fatalf("failed: %s", body)
	}
	if _, body := admin(t, "GET", "/webhooks/failed?limit=1"); strings.Count(body, `"message_id"`) != 1 {
		t.Fatalf("failed?limit=1: %s", body)
	}
	healthy.Store(true)
	if st, body := admin(t, "POST", "/webhooks/subscriptions/static:flaky/redeliver"); st != 200 || body != `{"redelivered":2,"subscription":"static:flaky"}` {
		t.Fatalf("redeliver: %d %s", st, body)
	}
	waitFor(t, "the redeliveries", func() bool {
		_, body := admin(t, "GET", "/webhooks/failed")
		return body == "[]" && hits.Load() == 6
	})
}

// The backlog of a subscription taken out of the Caddyfile shows in
// GET /webhooks/queues and can be discarded; an active one's cannot.
func TestAdminQueuesAndDiscard(t *testing.T) {
	gone := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusGone) }))
	defer gone.Close()
	live := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(204) }))
	defer live.Close()
	storage := t.TempDir()
	cfg := func(withShop bool) string {
		shop := ""
		if withShop {
			shop = fmt.Sprintf("subscription shop {\n\t\t\turl %s\n\t\t\tevents order.status\n\t\t}", gone.URL)
		}
		global, _ := globalOptions(t, storage, fmt.Sprintf(`allow_private_targets
		subscription live {
			url %s
			events other
		}
		%s`, live.URL, shop))
		return global + "\nhttp://localhost:9080 {\n\twebhook_publish\n}\n"
	}
	tester := startCaddy(t, cfg(true))
	for i := 0; i < 2; i++ {
		publish(t, tester.Client, "POST", `{"event":"order.status","data":{}}`)
	}
	waitDisabled(t, "static:shop")
	if st, body := admin(t, "GET", "/webhooks/queues"); st != 200 || body != `[{"subscription":"static:shop","queued":2,"registered":true}]` {
		t.Fatalf("queues: %d %s", st, body)
	}

	loadConfig(t, cfg(false)) // shop taken out of the Caddyfile
	if st, body := admin(t, "GET", "/webhooks/queues"); st != 200 || body != `[{"subscription":"static:shop","queued":2,"registered":false}]` {
		t.Fatalf("queues after the reload: %d %s", st, body)
	}
	if st, body := admin(t, "POST", "/webhooks/subscriptions/static:live/discard"); st != 409 {
		t.Fatalf("discarding an active subscription: %d %s", st, body)
	}
	if st, body := admin(t, "POST", "/webhooks/subscriptions/static:shop/discard"); st != 200 || body != `{"discarded":2,"subscription":"static:shop"}` {
		t.Fatalf("discard: %d %s", st, body)
	}
	if _, body := admin(t, "GET", "/webhooks/queues"); body != "[]" {
		t.Fatalf("queues after the discard: %s", body)
	}
	if _, body := admin(t, "GET", "/webhooks/failed?subscription=static:shop"); strings.Count(body, `"last_error":"discarded by an operator"`) != 2 {
		t.Fatalf("failed after the discard: %s", body)
	}
	if v := metricValue(t, "caddy_webhooks_queue_depth"); v != 0 {
		t.Fatalf("queue depth gauge %v after the discard", v)
	}
	for _, c := range []struct {
		method, path string
		status       int
	}{
		{"POST", "/webhooks/subscriptions/static:shop/discard", 404}, // nothing left
		{"GET", "/webhooks/subscriptions/static:shop/discard", 405},
		{"POST", "/webhooks/queues", 405},
	} {
		if st, body := admin(t, c.method, c.path); st != c.status {
			t.Errorf("%s %s: %d %s, want %d", c.method, c.path, st, body, c.status)
		}
	}
}

// Push windows are listed, and an operator opens one so that a client may
// push again at once.
func TestAdminPushWindows(t *testing.T) {
	up, tester, logFile := startIngest(t)
	arrived := make(chan struct{}, 16)
	up.onArrival = func() { arrived <- struct{}{} }
	push := func(key string) pushResult {
		return doPush(t, tester, "POST", "/api/v1/webhook", authHeaders(e2eAccessKey, key), "{}")
	}
	first := push(e2eAliceKey)
	if first.Status != 200 || push(e2eAliceKey).Status != 400 || push(e2eBobKey).Status != 200 {
		t.Fatal("pushes before the admin API was asked")
	}

	st, body := admin(t, "GET", "/webhooks/windows")
	var list []windowJSON
	if err := json.Unmarshal([]byte(body), &list); st != 200 || err != nil || len(list) != 2 {
		t.Fatalf("list: %d %s", st, body)
	}
	alice := windowJSON{Client: "alice", LastUsed: first.Envelope.LastUsed, NextPushAfter: first.Envelope.NextPushAfter, Interval: "1h0m0s", Configured: true}
	if list[0] != alice || list[1].Client != "bob" || list[1].Interval != "0s" || !list[1].Configured {
		t.Fatalf("listed %+v, want alice as %+v and bob", list, alice)
	}
	if st, body := admin(t, "GET", "/webhooks/windows/alice"); st != 200 || !strings.Contains(body, `"next_push_after":"`+alice.NextPushAfter+`"`) {
		t.Fatalf("alice's window: %d %s", st, body)
	}

	st, body = admin(t, "POST", "/webhooks/windows/alice/open")
	var opened windowJSON
	if err := json.Unmarshal([]byte(body), &opened); st != 200 || err != nil || opened.LastUsed != alice.LastUsed ||
		opened.NextPushAfter >= alice.NextPushAfter || opened.Interval != "" {
		t.Fatalf("open: %d %s", st, body)
	}
	if res := push(e2eAliceKey); res.Status != 200 {
		t.Fatalf("push after opening: %d %s", res.Status, res.Raw)
	}

	// A window whose client has a push in flight is that push's to settle.
	for len(arrived) > 0 {
		<-arrived
	}
	done := make(chan pushResult)
	go func() {
		done <- doPush(t, tester, "POST", "/api/v1/webhook", with(authHeaders(e2eAccessKey, e2eBobKey), "X-Test-Delay", "500ms"), "{}")
	}()
	<-arrived
	if st, body := admin(t, "DELETE", "/webhooks/windows/bob"); st != 409 {
		t.Fatalf("deleting during a push: %d %s", st, body)
	}
	if res := <-done; res.Status != 200 {
		t.Fatalf("the push in flight: %d %s", res.Status, res.Raw)
	}

	// Deleting forgets the window; the listing no longer has it.
	if st, body := admin(t, "DELETE", "/webhooks/windows/bob"); st != 200 || body != `{"client":"bob","deleted":true,"scope":""}` {
		t.Fatalf("delete: %d %s", st, body)
	}
	if st, body := admin(t, "GET", "/webhooks/windows"); st != 200 || strings.Contains(body, `"bob"`) {
		t.Fatalf("after deleting bob's window: %d %s", st, body)
	}

	assertAdminStatuses(t, []adminCase{
		{"GET", "/webhooks/windows/carol", 404},
		{"POST", "/webhooks/windows/carol/open", 404},
		{"POST", "/webhooks/windows/alice/open?scope=staging", 404},
		{"GET", "/webhooks/windows/alice/open", 405},
		{"POST", "/webhooks/windows", 405},
		{"POST", "/webhooks/windows/alice/close", 404},
		{"PUT", "/webhooks/windows/alice", 405},
		{"DELETE", "/webhooks/windows/bob", 404},
	})
	if st, body := admin(t, "GET", "/webhooks/windows?scope=staging"); st != 200 || body != "[]" {
		t.Errorf("windows of an empty scope: %d %s", st, body)
	}
	waitFor(t, "the opening to be logged", func() bool {
		return strings.Contains(readFile(t, logFile), `"push window opened by an operator","scope":"","client":"alice"`)
	})
}

// An operator sees a subscription's attempts with its receiver's answers,
// can send it a test event (an example one, or a payload of their own)
// that is neither queued nor recorded, and once it answers again, have
// its deliveries retried now rather than on the retry schedule.
func TestAdminAttemptsTestSendAndRetry(t *testing.T) {
	type hit struct {
		event, auth, body string
	}
	hits := make(chan hit, 16)
	rcv, healthy := flakyReceiver(t, http.StatusServiceUnavailable, func(r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		hits <- hit{r.Header.Get("X-Event-Name"), r.Header.Get("Authorization"), string(b)}
	})
	global, logFile := globalOptions(t, t.TempDir(), fmt.Sprintf(`allow_private_targets
		retry 1h
		subscription pos {
			url %[1]s/flybuy
			events *
			token admin-test-token
			envelope data
		}
		subscription shop {
			url %[1]s/kinguin
			events order.status product.update
		}`, rcv.URL))
	tester := startCaddy(t, global+"\nhttp://localhost:9080 {\n\twebhook_publish\n}\n")
	publish(t, tester.Client, "POST", `{"event":"order.status","id":"m-1","data":{"n":1}}`)
	<-hits
	<-hits // one attempt each, both refused; the next is an hour away
	waitFor(t, "the refused attempts to be recorded", func() bool {
		_, body := admin(t, "GET", "/webhooks/subscriptions/static:pos/attempts")
		return strings.Contains(body, `"message_id":"m-1"`)
	})
	st, body := admin(t, "GET", "/webhooks/subscriptions/static:pos/attempts")
	var atts []map[string]any
	if err := json.Unmarshal([]byte(body), &atts); st != 200 || err != nil || len(atts) != 1 {
		t.Fatalf("attempts: %d %s", st, body)
	}
	if a := atts[0]; a["delivery_id"] == "" || a["event"] != "order.status" || a["attempt"] != float64(1) ||
		a["status"] != float64(503) || a["success"] != false || a["error"] != "receiver answered 503 Service Unavailable" {
		t.Fatalf("attempt %v", a)
	}

	// An example event: the first event the subscription takes, or
	// webhook.test for one that takes all; with its authentication and
	// envelope, the failure reported as it is.
	st, body = admin(t, "POST", "/webhooks/subscriptions/static:pos/test")
	if st != 200 || !strings.Contains(body, `"success":false`) || !strings.Contains(body, `"status":503`) ||
		!strings.Contains(body, `"event":"webhook.test"`) {
		t.Fatalf("test send: %d %s", st, body)
	}
	h := <-hits
	if h.event != "webhook.test" || h.auth != `Token token="admin-test-token"` ||
		!strings.HasPrefix(h.body, `{"data":{"event":"webhook.test","sentAt":"`) || !strings.Contains(h.body, `"test":true`) {
		t.Fatalf("test event received: %+v", h)
	}
	if _, body := admin(t, "POST", "/webhooks/subscriptions/static:shop/test"); !strings.Contains(body, `"event":"order.status"`) {
		t.Fatalf("test send to shop: %s", body)
	}
	<-hits

	// A payload of the operator's own, once the receiver is fixed.
	healthy.Store(true)
	st, b := adminRequest(t, "POST", "/webhooks/subscriptions/static:shop/test", "application/json",
		[]byte(`{"event":"product.update","data":{"sku":"A1"}}`))
	if st != 200 || !strings.Contains(string(b), `"success":true`) || !strings.Contains(string(b), `"status":204`) {
		t.Fatalf("test send with a payload: %d %s", st, b)
	}
	if h := <-hits; h.event != "product.update" || h.body != `{"sku":"A1"}` || h.auth != "" {
		t.Fatalf("payload received: %+v", h)
	}
	for body, want := range map[string]string{
		`{"event":"refund.created","data":{}}`:                                         `does not take event \"refund.created\"`,
		`{"event":"order.status","id":"x","data":{}}`:                                  "takes only event and data",
		`{"event":"order.status","data":"text"}`:                                       "data must be a JSON object or array",
		`{"event":"order.status","data":{}`:                                            "invalid JSON",
		`{"event":"order.status","data":{"pad":"` + strings.Repeat("x", 1<<20) + `"}}`: "larger than 1048576 bytes",
	} {
		st, b := adminRequest(t, "POST", "/webhooks/subscriptions/static:shop/test", "application/json", []byte(body))
		if st/100 != 4 || !strings.Contains(string(b), want) {
			t.Errorf("test send of %.60s: %d %s, want %q", body, st, b, want)
		}
	}

	// Test sends are not attempts: neither listed nor counted in health.
	if _, body := admin(t, "GET", "/webhooks/subscriptions/static:shop/attempts"); strings.Count(body, `"delivery_id"`) != 1 {
		t.Fatalf("attempts after test sends: %s", body)
	}
	if _, body := admin(t, "GET", "/webhooks/subscriptions/static:shop"); strings.Contains(body, "last_success") {
		t.Fatalf("a test send became the subscription's last success: %s", body)
	}
	if _, body := admin(t, "GET", "/webhooks/subscriptions/static:pos/attempts?limit=1"); strings.Count(body, `"delivery_id"`) != 1 {
		t.Fatalf("attempts?limit=1: %s", body)
	}
	// The subscription shows when its delivery is next tried: in an hour,
	// give or take the retry's jitter.
	_, body = admin(t, "GET", "/webhooks/subscriptions/static:shop")
	var view struct {
		Queued      int       `json:"queued"`
		NextAttempt time.Time `json:"next_attempt"`
	}
	if err := json.Unmarshal([]byte(body), &view); err != nil || view.Queued != 1 ||
		view.NextAttempt.Location() != time.UTC || time.Until(view.NextAttempt) < 50*time.Minute || time.Until(view.NextAttempt) > 70*time.Minute {
		t.Fatalf("subscription before the retry: %s", body)
	}

	// The receiver is back: the deliveries waiting an hour go now.
	for _, id := range []string{"static:pos", "static:shop"} {
		if st, body := admin(t, "POST", "/webhooks/subscriptions/"+id+"/retry"); st != 200 || body != `{"rescheduled":1,"subscription":"`+id+`"}` {
			t.Fatalf("retry %s: %d %s", id, st, body)
		}
	}
	waitFor(t, "the second attempts", func() bool {
		_, body := admin(t, "GET", "/webhooks/subscriptions/static:shop/attempts?limit=1")
		return strings.Contains(body, `"attempt":2`) && strings.Contains(body, `"success":true`)
	})
	if h := <-hits; h.event != "order.status" {
		t.Fatalf("second attempt: %+v", h)
	}
	if _, body := admin(t, "GET", "/webhooks/subscriptions/static:shop"); !strings.Contains(body, `"queued":0`) || strings.Contains(body, "next_attempt") {
		t.Fatalf("subscription after the retry: %s", body)
	}
	assertAdminStatuses(t, []adminCase{
		{"POST", "/webhooks/subscriptions/static:nope/retry", 404},
		{"GET", "/webhooks/subscriptions/static:pos/retry", 405},
		{"GET", "/webhooks/subscriptions/static:nope/attempts", 404},
		{"POST", "/webhooks/subscriptions/static:nope/test", 404},
		{"POST", "/webhooks/subscriptions/static:pos/attempts", 405},
		{"GET", "/webhooks/subscriptions/static:pos/test", 405},
		{"GET", "/webhooks/subscriptions/static:pos/attempts?limit=-1", 400},
	})
	assertNotInFile(t, logFile, "admin-test-token")
}
