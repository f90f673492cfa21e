package caddywebhook

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"
)

// hashPassword makes a cheap bcrypt hash for basic_auth.
func hashPassword(t *testing.T, pw string) string {
	t.Helper()
	h, err := bcrypt.GenerateFromPassword([]byte(pw), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	return string(h)
}

func apiConfig(t *testing.T, storage, tikiHash, doshiiHash string) string {
	global, _ := globalOptions(t, storage, "allow_private_targets\n\t\tretry 1s")
	return global + fmt.Sprintf(`
http://localhost:9080 {
	handle /v1/webhooks* {
		basic_auth {
			seller-1 %s
			seller-2 %s
		}
		webhook_api {
			dialect tiki
			tenant {http.auth.user.id}
		}
	}
	handle /partner/v3/webhooks* {
		basic_auth {
			partner-1 %s
		}
		webhook_api {
			dialect doshii
			tenant {http.auth.user.id}
			max_webhooks 1
		}
	}
	handle /publish {
		webhook_publish
	}
}
`, tikiHash, tikiHash, doshiiHash)
}

func call(t *testing.T, client *http.Client, user, pass, method, path, body string, header ...string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(method, testBase+path, strings.NewReader(body))
	if user != "" {
		req.SetBasicAuth(user, pass)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	res, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, strings.TrimSpace(string(b))
}

func TestAPIEndToEnd(t *testing.T) {
	tikiHash, doshiiHash := hashPassword(t, "tiki-pass"), hashPassword(t, "doshii-pass")
	sub := newSubscriber(t)
	storage := t.TempDir()
	cfg := apiConfig(t, storage, tikiHash, doshiiHash)
	tester := startCaddy(t, cfg)
	c := tester.Client

	// basic_auth in front: no credentials, no API.
	if st, _ := call(t, c, "", "", "GET", "/v1/webhooks", ""); st != 401 {
		t.Fatalf("unauthenticated: %d", st)
	}
	if st, _ := call(t, c, "seller-1", "wrong", "GET", "/v1/webhooks", ""); st != 401 {
		t.Fatalf("wrong password: %d", st)
	}

	// Tiki: register, grant credentials, update, deliver.
	st, body := call(t, c, "seller-1", "tiki-pass", "POST", "/v1/webhooks", `{"uri":"`+sub.URL+`/tiki","event":"product:request:rejected"}`)
	if st != 200 || body != `{"event":"product:request:rejected","seller_id":"seller-1","uri":"`+sub.URL+`/tiki"}` {
		t.Fatalf("register: %d %s", st, body)
	}
	call(t, c, "seller-1", "tiki-pass", "PUT", "/v1/webhooks/credentials", `{"id":"tiki-id","secret":"tiki-secret"}`)
	st, body = call(t, c, "seller-1", "tiki-pass", "PUT", "/v1/webhooks", `{"uri":"`+sub.URL+`/tiki-v2","event":"product:request:rejected"}`)
	if st != 200 {
		t.Fatalf("update: %d %s", st, body)
	}
	// seller-2 sees none of it.
	if st, body := call(t, c, "seller-2", "tiki-pass", "GET", "/v1/webhooks", ""); st != 200 || body != `{"data":[]}` {
		t.Fatalf("seller-2 list: %d %s", st, body)
	}

	// Doshii: register (verified), deliver with key/token.
	st, body = call(t, c, "partner-1", "doshii-pass", "POST", "/partner/v3/webhooks",
		`{"event":"order_created","webhookUrl":"`+sub.URL+`/doshii","authenticationKey":"secure_key","authenticationToken":"secure_token"}`)
	if st != 200 || !strings.Contains(body, `"uri":"http://localhost:9080/partner/v3/webhooks/order_created"`) {
		t.Fatalf("doshii register: %d %s", st, body)
	}
	// max_webhooks 1: a second webhook is refused.
	st, body = call(t, c, "partner-1", "doshii-pass", "POST", "/partner/v3/webhooks",
		`{"event":"order_updated","webhookUrl":"`+sub.URL+`/doshii"}`)
	if st != 400 || body != `{"message":"too many webhooks: at most 1 may be registered"}` {
		t.Fatalf("doshii register beyond max_webhooks: %d %s", st, body)
	}

	for _, ev := range []string{
		`{"event":"product:request:rejected","tenant":"seller-1","data":{"sku":"A1"}}`,
		`{"event":"order_created","tenant":"partner-1","location":"loc-9","data":{"id":7}}`,
	} {
		if st, body := call(t, c, "", "", "POST", "/publish", ev); st != 202 || !strings.HasSuffix(body, `"deliveries":1}`) {
			t.Fatalf("publish: %d %s", st, body)
		}
	}
	waitFor(t, "the two deliveries", func() bool {
		n := 0
		for _, r := range sub.received() {
			if r.Header.Get("X-Event-Name") != "webhook.verify" {
				n++
			}
		}
		return n == 2
	})
	for _, r := range sub.received() {
		switch r.Header.Get("X-Event-Name") {
		case "product:request:rejected":
			if r.Header.Get("Authorization") != "Basic "+base64.StdEncoding.EncodeToString([]byte("tiki-id:tiki-secret")) {
				t.Fatalf("tiki delivery auth %q", r.Header.Get("Authorization"))
			}
		case "order_created":
			if r.Header.Get("Authorization") != "Basic "+base64.StdEncoding.EncodeToString([]byte("secure_key:secure_token")) {
				t.Fatalf("doshii delivery auth %q", r.Header.Get("Authorization"))
			}
		}
	}

	// Registrations survive the app stopping and starting again.
	loadConfig(t, emptyConfig)
	loadConfig(t, cfg)
	st, body = call(t, c, "seller-1", "tiki-pass", "GET", "/v1/webhooks", "")
	if st != 200 || body != `{"data":[{"uri":"`+sub.URL+`/tiki-v2","event":"product:request:rejected"}]}` {
		t.Fatalf("after restart: %d %s", st, body)
	}
	if st, _ := call(t, c, "partner-1", "doshii-pass", "GET", "/partner/v3/webhooks/order_created", ""); st != 200 {
		t.Fatalf("doshii after restart: %d", st)
	}

	// Delete, and nothing more is delivered.
	if st, _ := call(t, c, "seller-1", "tiki-pass", "DELETE", "/v1/webhooks?event=product:request:rejected", ""); st != 200 {
		t.Fatalf("delete: %d", st)
	}
	if st, body := call(t, c, "", "", "POST", "/publish", `{"event":"product:request:rejected","tenant":"seller-1","data":{}}`); st != 202 || !strings.HasSuffix(body, `"deliveries":0}`) {
		t.Fatalf("publish after delete: %d %s", st, body)
	}
}

// A Doshii webhook disabled by a 410 is enabled by an update to the same
// URL, since Doshii updates are verified: a tenant who fixed its endpoint
// and submitted the webhook again gets deliveries without another call.
func TestVerifiedUpdateEnablesThroughCaddy(t *testing.T) {
	var gone atomic.Bool
	var delivered atomic.Int32
	rcv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if gone.Load() {
			w.WriteHeader(http.StatusGone)
			return
		}
		if r.Header.Get("X-Event-Name") == "order_created" {
			delivered.Add(1)
		}
		w.WriteHeader(204)
	}))
	defer rcv.Close()
	tester := startCaddy(t, apiConfig(t, t.TempDir(), hashPassword(t, "tiki-pass"), hashPassword(t, "doshii-pass")))
	c := tester.Client
	doshii := func(method, path, body string) {
		t.Helper()
		if st, b := call(t, c, "partner-1", "doshii-pass", method, "/partner/v3/webhooks"+path, body); st != 200 {
			t.Fatalf("%s: %d %s", method, st, b)
		}
	}
	publishOrder := func() {
		t.Helper()
		if st, b := call(t, c, "", "", "POST", "/publish", `{"event":"order_created","tenant":"partner-1","data":{}}`); st != 202 {
			t.Fatalf("publish: %d %s", st, b)
		}
	}
	doshii("POST", "", `{"event":"order_created","webhookUrl":"`+rcv.URL+`"}`)
	_, list := admin(t, "GET", "/webhooks/subscriptions")
	var subs []struct{ ID string }
	if err := json.Unmarshal([]byte(list), &subs); err != nil || len(subs) != 1 {
		t.Fatalf("subscriptions: %s", list)
	}
	gone.Store(true)
	publishOrder()
	waitDisabled(t, subs[0].ID)

	gone.Store(false)
	doshii("PUT", "/order_created", `{"webhookUrl":"`+rcv.URL+`"}`)
	if _, body := admin(t, "GET", "/webhooks/subscriptions/"+subs[0].ID); strings.Contains(body, `"disabled":true`) || !strings.Contains(body, `"enabled_at"`) {
		t.Fatalf("not enabled by a verified update: %s", body)
	}
	publishOrder()
	waitFor(t, "deliveries after the update", func() bool { return delivered.Load() >= 1 })
}

func TestAPIRefusesEmptyTenant(t *testing.T) {
	global, _ := globalOptions(t, t.TempDir(), "")
	tester := startCaddy(t, global+`
http://localhost:9080 {
	webhook_api {
		dialect tiki
		tenant {http.request.header.X-Caller}
	}
}`)
	st, body := call(t, tester.Client, "", "", "GET", "/v1/webhooks", "")
	if st != 401 || body != `{"error":{"message":"not authenticated"}}` {
		t.Fatalf("no tenant: %d %s", st, body)
	}
	st, body = call(t, tester.Client, "", "", "GET", "/v1/webhooks", "", "X-Caller", "acme")
	if st != 200 || body != `{"data":[]}` {
		t.Fatalf("with tenant: %d %s", st, body)
	}
}

// A registration whose verification is under way when the last config
// using the store goes (grace_period 1ns here) is still stored, as Caddy
// answers it: the store waits for the requests using it.
func TestRegistrationInFlightFinishesBeforeStoreCloses(t *testing.T) {
	doshiiHash := hashPassword(t, "doshii-pass")
	arrived := make(chan struct{}, 1)
	verifier := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		arrived <- struct{}{}
		time.Sleep(300 * time.Millisecond)
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(verifier.Close)
	cfg := apiConfig(t, t.TempDir(), hashPassword(t, "unused"), doshiiHash)
	tester := startCaddy(t, cfg)

	type answer struct {
		status int
		body   string
	}
	done := make(chan answer)
	go func() {
		st, body := call(t, tester.Client, "partner-1", "doshii-pass", "POST", "/partner/v3/webhooks",
			`{"event":"order_created","webhookUrl":"`+verifier.URL+`/hook"}`)
		done <- answer{st, body}
	}()
	<-arrived
	loadConfig(t, emptyConfig)
	if a := <-done; a.status != 200 {
		t.Fatalf("registration in flight: %d %s", a.status, a.body)
	}
	loadConfig(t, cfg)
	if st, body := call(t, tester.Client, "partner-1", "doshii-pass", "GET", "/partner/v3/webhooks/order_created", ""); st != 200 {
		t.Fatalf("the registration after the store reopened: %d %s", st, body)
	}
}
