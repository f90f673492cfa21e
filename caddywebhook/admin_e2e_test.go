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
)

func admin(t *testing.T, method, path string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(method, "http://localhost:2999"+path, nil)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, strings.TrimSpace(string(b))
}

func TestAdminAPI(t *testing.T) {
	var healthy atomic.Bool
	rcv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		if healthy.Load() {
			w.WriteHeader(204)
			return
		}
		w.WriteHeader(http.StatusGone)
	}))
	defer rcv.Close()
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
		req, _ := http.NewRequest("POST", testBase+"/", strings.NewReader(`{"event":"order.status","data":{"n":1}}`))
		res, err := tester.Client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
	}
	waitFor(t, "the 410 to disable shop", func() bool {
		_, body := admin(t, "GET", "/webhooks/subscriptions/static:shop")
		return strings.Contains(body, `"disabled":true`)
	})

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

	for _, c := range []struct {
		method, path string
		status       int
	}{
		{"GET", "/webhooks/subscriptions/static:nope", 404},
		{"POST", "/webhooks/subscriptions/static:nope/enable", 404},
		{"GET", "/webhooks/subscriptions/static:shop/enable", 405},
		{"POST", "/webhooks/subscriptions", 405},
		{"GET", "/webhooks/failed?limit=zero", 400},
		{"GET", "/webhooks/elsewhere", 404},
	} {
		if st, body := admin(t, c.method, c.path); st != c.status {
			t.Errorf("%s %s: %d %s, want %d", c.method, c.path, st, body, c.status)
		}
	}
}

// Failed deliveries are listed and can be redelivered.
func TestAdminFailedAndRedeliver(t *testing.T) {
	var healthy atomic.Bool
	var hits atomic.Int32
	rcv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		hits.Add(1)
		if healthy.Load() {
			w.WriteHeader(204)
			return
		}
		w.WriteHeader(500)
	}))
	defer rcv.Close()
	global, _ := globalOptions(t, t.TempDir(), fmt.Sprintf(`allow_private_targets
		retry 10ms
		subscription flaky {
			url %s
			events *
		}`, rcv.URL))
	tester := startCaddy(t, global+"\nhttp://localhost:9080 {\n\twebhook_publish\n}\n")
	req, _ := http.NewRequest("POST", testBase+"/", strings.NewReader(`{"event":"e","id":"m-1","data":{}}`))
	res, err := tester.Client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	waitFor(t, "the delivery to fail for good", func() bool {
		_, body := admin(t, "GET", "/webhooks/failed")
		return strings.Contains(body, `"message_id":"m-1"`)
	})
	_, body := admin(t, "GET", "/webhooks/failed?subscription=static:flaky")
	if !strings.Contains(body, `"attempts":2`) || !strings.Contains(body, `"last_status":500`) {
		t.Fatalf("failed: %s", body)
	}
	healthy.Store(true)
	if st, body := admin(t, "POST", "/webhooks/subscriptions/static:flaky/redeliver"); st != 200 || body != `{"redelivered":1,"subscription":"static:flaky"}` {
		t.Fatalf("redeliver: %d %s", st, body)
	}
	waitFor(t, "the redelivery", func() bool {
		_, body := admin(t, "GET", "/webhooks/failed")
		return body == "[]" && hits.Load() == 3
	})
}
