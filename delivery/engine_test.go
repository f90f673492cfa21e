package delivery

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4"
	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/hookgate/caddy-webhook/internal/store"
	"github.com/hookgate/caddy-webhook/internal/testclock"
)

const kinguinPayload = `{"kinguinId":1949,"productId":"5c9b5f6b2539a4e8f172916a","qty":845,"textQty":845,"cheapestOfferId":["611222acff9ca40001f0b020"],"updatedAt":"2020-10-16T11:24:08.015+00:00"}`

func TestDeliveryHeadersAndAuthStyles(t *testing.T) {
	secret := "whsec_" + base64.StdEncoding.EncodeToString([]byte("0123456789abcdef0123456789abcdef"))
	previous := "whsec_" + base64.StdEncoding.EncodeToString([]byte("fedcba9876543210fedcba9876543210"))
	unrelated := "whsec_" + base64.StdEncoding.EncodeToString([]byte("not-this-one-0123456789abcdef"))
	cases := []struct {
		name  string
		auth  Auth
		env   string
		check func(t *testing.T, h hit)
	}{
		{"kinguin secret header", Auth{SecretHeader: "X-Event-Secret", Secret: "kin-secret"}, "", func(t *testing.T, h hit) {
			if h.Header.Get("X-Event-Secret") != "kin-secret" || h.Header.Get("Authorization") != "" || h.Body != kinguinPayload {
				t.Fatalf("headers %v body %s", h.Header, h.Body)
			}
		}},
		{"flybuy token and data envelope", Auth{Token: "FFCPUG2A"}, "data", func(t *testing.T, h hit) {
			if h.Header.Get("Authorization") != `Token token="FFCPUG2A"` || h.Body != `{"data":`+kinguinPayload+`}` {
				t.Fatalf("headers %v body %s", h.Header, h.Body)
			}
		}},
		{"basic", Auth{BasicUser: "tiki-id", BasicPassword: "tiki-secret"}, "", func(t *testing.T, h hit) {
			u, p, ok := (&http.Request{Header: h.Header}).BasicAuth()
			if !ok || u != "tiki-id" || p != "tiki-secret" {
				t.Fatalf("basic auth %q %q %v", u, p, ok)
			}
		}},
		{"raw authorization", Auth{Authorization: "secure_token"}, "", func(t *testing.T, h hit) {
			if h.Header.Get("Authorization") != "secure_token" {
				t.Fatalf("Authorization %q", h.Header.Get("Authorization"))
			}
		}},
		{"standard webhooks signature", Auth{SigningSecret: secret}, "", func(t *testing.T, h hit) {
			wh, err := standardwebhooks.NewWebhook(secret)
			if err != nil {
				t.Fatal(err)
			}
			// The engine signs with its (fake) clock; check the signature,
			// not the freshness.
			if err := wh.VerifyIgnoringTimestamp([]byte(h.Body), h.Header); err != nil {
				t.Fatalf("reference library rejects the signature: %v (headers %v)", err, h.Header)
			}
			if h.Header.Get("Webhook-Timestamp") != fmt.Sprint(t0.Unix()) {
				t.Fatalf("timestamp %q", h.Header.Get("Webhook-Timestamp"))
			}
			if err := wh.VerifyIgnoringTimestamp([]byte(h.Body+" "), h.Header); err == nil {
				t.Fatal("a changed body still verifies")
			}
		}},
		// While a signing secret is rotated, each delivery carries a
		// signature for the new secret and one for the old: receivers still
		// holding the old one, and those already given the new one, both
		// accept it.
		{"signature during a rotation", Auth{SigningSecret: secret, PreviousSigningSecrets: []string{previous}}, "", func(t *testing.T, h hit) {
			if sigs := strings.Fields(h.Header.Get("Webhook-Signature")); len(sigs) != 2 {
				t.Fatalf("webhook-signature %q: want two signatures", h.Header.Get("Webhook-Signature"))
			}
			for _, key := range []string{secret, previous} {
				wh, err := standardwebhooks.NewWebhook(key)
				if err != nil {
					t.Fatal(err)
				}
				if err := wh.VerifyIgnoringTimestamp([]byte(h.Body), h.Header); err != nil {
					t.Fatalf("a receiver with one of the secrets rejects the message: %v", err)
				}
			}
			wh, _ := standardwebhooks.NewWebhook(unrelated)
			if err := wh.VerifyIgnoringTimestamp([]byte(h.Body), h.Header); err == nil {
				t.Fatal("a receiver with another secret accepts the message")
			}
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rcv := newReceiver(t, nil)
			s := sub("s", rcv.URL, "product.update")
			s.Auth, s.Envelope = tc.auth, tc.env
			te := newTestEngine(t, Config{Subscriptions: []Subscription{s}})
			res, err := te.Publish(msg("product.update", kinguinPayload))
			if err != nil || res.Deliveries != 1 || !strings.HasPrefix(res.ID, "msg_") {
				t.Fatalf("publish: %+v %v", res, err)
			}
			eventually(t, "the delivery", func() bool { return len(rcv.got()) == 1 })
			h := rcv.got()[0]
			for k, want := range map[string]string{
				"Content-Type": "application/json", "X-Event-Name": "product.update",
				"Webhook-Id": res.ID, "User-Agent": UserAgent,
			} {
				if h.Header.Get(k) != want {
					t.Errorf("%s = %q, want %q", k, h.Header.Get(k), want)
				}
			}
			tc.check(t, h)
			eventually(t, "delivered state", func() bool {
				d, _, _ := te.store.Delivery(deliveryID(res.ID, s.ID))
				return d.State == StateDelivered
			})
		})
	}
}

func TestMatchingTenantEventLocation(t *testing.T) {
	rcv := newReceiver(t, nil)
	all := sub("all", rcv.URL+"/all")
	orders := sub("orders", rcv.URL+"/orders", "order_created")
	loc := sub("loc", rcv.URL+"/loc", "order_created")
	loc.Location = "store-1"
	other := sub("other", rcv.URL+"/other")
	other.Tenant = "acme"
	te := newTestEngine(t, Config{Subscriptions: []Subscription{all, orders, loc, other}})

	for _, tc := range []struct {
		m    Message
		want int
	}{
		{Message{Event: "order_created", Data: []byte(`{}`)}, 2},                      // all, orders (loc is location-bound)
		{Message{Event: "order_created", Location: "store-1", Data: []byte(`{}`)}, 3}, // + loc
		{Message{Event: "order_created", Location: "store-2", Data: []byte(`{}`)}, 2}, // not loc
		{Message{Event: "product.update", Data: []byte(`{}`)}, 1},                     // all only
		{Message{Event: "order_created", Tenant: "acme", Data: []byte(`{}`)}, 1},      // other only
		{Message{Event: "order_created", Tenant: "nobody", Data: []byte(`{}`)}, 0},
	} {
		res, err := te.Publish(tc.m)
		if err != nil || res.Deliveries != tc.want {
			t.Errorf("%+v: %d deliveries (%v), want %d", tc.m, res.Deliveries, err, tc.want)
		}
	}
	eventually(t, "all deliveries", func() bool { return len(rcv.got()) == 9 })
}

func TestIdempotentPublish(t *testing.T) {
	rcv := newReceiver(t, nil)
	te := newTestEngine(t, Config{Subscriptions: []Subscription{sub("a", rcv.URL), sub("b", rcv.URL)}})
	m := msg("x", `{"n":1}`)
	m.ID = "order-42"
	first, err := te.Publish(m)
	if err != nil || first.ID != "order-42" || first.Deliveries != 2 || first.Duplicate {
		t.Fatalf("first: %+v %v", first, err)
	}
	again, err := te.Publish(m)
	if err != nil || again.ID != "order-42" || again.Deliveries != 2 || !again.Duplicate {
		t.Fatalf("again: %+v %v", again, err)
	}
	eventually(t, "two deliveries", func() bool { return len(rcv.got()) == 2 })
	// The same id in another tenant is another message.
	m.Tenant = "t2"
	if res, _ := te.Publish(m); res.Duplicate {
		t.Fatal("ids are per tenant")
	}
	time.Sleep(50 * time.Millisecond) // would a third delivery show up?
	if n := len(rcv.got()); n != 2 {
		t.Fatalf("receiver got %d requests, want 2", n)
	}
}

// An ID published again with another message is refused: a backend that
// reuses, say, an order ID for each event of the order would otherwise see
// its later events swallowed as repeats.
func TestPublishIDReusedForAnotherMessage(t *testing.T) {
	rcv := newReceiver(t, nil)
	te := newTestEngine(t, Config{Subscriptions: []Subscription{sub("a", rcv.URL)}})
	m := msg("x", `{"n":1}`)
	m.ID, m.Location = "order-42", ""
	if _, err := te.Publish(m); err != nil {
		t.Fatal(err)
	}
	for name, other := range map[string]func(*Message){
		"event":    func(m *Message) { m.Event = "y" },
		"data":     func(m *Message) { m.Data = []byte(`{"n":2}`) },
		"location": func(m *Message) { m.Location = "store-1" },
	} {
		changed := m
		other(&changed)
		if res, err := te.Publish(changed); !errors.Is(err, ErrIDReused) {
			t.Errorf("another %s under the same id: %+v, %v", name, res, err)
		}
	}
	if res, err := te.Publish(m); err != nil || !res.Duplicate {
		t.Fatalf("the same message again: %+v %v", res, err)
	}
	// A publish that got past that look (racing the first) is refused
	// where it would store, by a shared transaction or a large fan-out.
	changed := m
	changed.Data = []byte(`{"n":9}`)
	subs := []*Subscription{{ID: "static:a"}}
	if _, err := te.store.enqueue(changed, subs, false, t0, 0); !errors.Is(err, ErrIDReused) {
		t.Errorf("grouped enqueue of another message under the id: %v", err)
	}
	if _, err := te.store.enqueueFanOut(changed, subs, false, t0, 0); !errors.Is(err, ErrIDReused) {
		t.Errorf("fan-out enqueue of another message under the id: %v", err)
	}

	// Records stored before they had a digest still answer repeats.
	legacy := m
	legacy.ID = "order-43"
	err := te.db.Update(func(txn *badger.Txn) error {
		return setJSON(txn, msgKey(legacy.Tenant, legacy.ID), publishRecord{Deliveries: 1, At: t0}, 0)
	})
	if err != nil {
		t.Fatal(err)
	}
	legacy.Data = []byte(`{"n":3}`)
	if res, err := te.Publish(legacy); err != nil || !res.Duplicate || res.Deliveries != 1 {
		t.Fatalf("repeat of a record without digest: %+v %v", res, err)
	}
}

// Failures are retried on the schedule with the same Webhook-Id until a
// 2xx; 3xx counts as a failure and is not followed.
func TestRetryScheduleUntilSuccess(t *testing.T) {
	var redirected atomic.Bool
	target := newReceiver(t, func(int, http.ResponseWriter) { redirected.Store(true) })
	rcv := newReceiver(t, func(n int, w http.ResponseWriter) {
		switch n {
		case 1:
			w.WriteHeader(500)
		case 2:
			w.Header().Set("Location", target.URL)
			w.WriteHeader(302)
		default:
			w.WriteHeader(200)
		}
	})
	retry := []time.Duration{10 * time.Second, time.Minute, time.Hour}
	te := newTestEngine(t, Config{Retry: retry, Subscriptions: []Subscription{sub("s", rcv.URL)}})
	res, _ := te.Publish(msg("x", `{}`))
	did := deliveryID(res.ID, StaticID("s"))

	eventually(t, "attempt 1", func() bool { return te.delivery(t, did).Attempts == 1 })
	d := te.delivery(t, did)
	if d.State != StatePending || d.LastStatus != 500 {
		t.Fatalf("after attempt 1: %+v", d)
	}
	if wait := d.NextAttempt.Sub(t0); wait < 9*time.Second || wait > 11*time.Second {
		t.Fatalf("next attempt in %v, want 10s ± 10%%", wait)
	}
	// Not due yet: nothing happens on a kick.
	te.clock.Advance(8 * time.Second)
	te.Kick()
	time.Sleep(50 * time.Millisecond)
	if len(rcv.got()) != 1 {
		t.Fatal("retried before its time")
	}
	te.clock.Advance(4 * time.Second)
	te.Kick()
	eventually(t, "attempt 2", func() bool { return te.delivery(t, did).Attempts == 2 })
	if d := te.delivery(t, did); d.State != StatePending || d.LastStatus != 302 || d.NextAttempt.Sub(te.clock.Now()) < 54*time.Second {
		t.Fatalf("after the 302: %+v", d)
	}
	te.clock.Advance(2 * time.Minute)
	te.Kick()
	eventually(t, "delivered", func() bool { return te.delivery(t, did).State == StateDelivered })

	hits := rcv.got()
	if len(hits) != 3 || redirected.Load() {
		t.Fatalf("%d hits, redirect followed: %v", len(hits), redirected.Load())
	}
	for _, h := range hits {
		if h.Header.Get("Webhook-Id") != res.ID {
			t.Fatalf("Webhook-Id changed across retries: %q vs %q", h.Header.Get("Webhook-Id"), res.ID)
		}
	}
	atts, err := te.store.Attempts(did)
	if err != nil || len(atts) != 3 || atts[0].Status != 500 || atts[1].Status != 302 || !atts[2].Success {
		t.Fatalf("attempts %+v %v", atts, err)
	}
}

func TestRetryAfterHonoured(t *testing.T) {
	for _, code := range []int{429, 503} {
		t.Run(fmt.Sprint(code), func(t *testing.T) {
			rcv := newReceiver(t, func(n int, w http.ResponseWriter) {
				w.Header().Set("Retry-After", "120")
				w.WriteHeader(code)
			})
			te := newTestEngine(t, Config{Retry: []time.Duration{time.Second}, Subscriptions: []Subscription{sub("s", rcv.URL)}})
			res, _ := te.Publish(msg("x", `{}`))
			did := deliveryID(res.ID, StaticID("s"))
			eventually(t, "attempt", func() bool { return te.delivery(t, did).Attempts == 1 })
			if wait := te.delivery(t, did).NextAttempt.Sub(t0); wait != 120*time.Second {
				t.Fatalf("next attempt in %v, want Retry-After's 120s", wait)
			}
		})
	}
	if d := parseRetryAfter(t0.Add(30*time.Second).Format(http.TimeFormat), t0); d != 30*time.Second {
		t.Fatalf("HTTP-date Retry-After: %v", d)
	}
	for _, v := range []string{"99999999", "9999999999999", "9223372036854775807"} {
		if d := parseRetryAfter(v, t0); d != maxRetryAfter {
			t.Fatalf("Retry-After %s is not capped: %v", v, d)
		}
	}
}

func TestExhaustedRetriesFail(t *testing.T) {
	rcv := newReceiver(t, status(500))
	te := newTestEngine(t, Config{Retry: []time.Duration{time.Second}, Subscriptions: []Subscription{sub("s", rcv.URL)}})
	res, _ := te.Publish(msg("x", `{}`))
	did := deliveryID(res.ID, StaticID("s"))
	eventually(t, "attempt 1", func() bool { return te.delivery(t, did).Attempts == 1 })
	te.clock.Advance(2 * time.Second)
	te.Kick()
	eventually(t, "failed", func() bool { return te.delivery(t, did).State == StateFailed })
	if n, _ := te.store.QueueDepth(StaticID("s")); n != 0 {
		t.Fatalf("a failed delivery is still queued (%d)", n)
	}
	assertExpires(t, te, prefixD+did)
}

// A delivery of a message published without an ID lives in its queue
// entry alone while it is retried; once it fails it has a record, which
// its redelivery takes up and its success leaves expiring.
func TestQueueOnlyDeliveryGetsARecordWhenItFails(t *testing.T) {
	var up atomic.Bool
	rcv := newReceiver(t, func(_ int, w http.ResponseWriter) {
		if up.Load() {
			w.WriteHeader(http.StatusNoContent)
			return
		}
		w.WriteHeader(http.StatusInternalServerError)
	})
	te := newTestEngine(t, Config{Retry: []time.Duration{time.Second}, Subscriptions: []Subscription{sub("s", rcv.URL)}})
	res, _ := te.Publish(msg("x", `{"n":1}`))
	did := deliveryID(res.ID, StaticID("s"))
	assertAbsent(t, te, prefixD+did)
	eventually(t, "attempt 1", func() bool { return te.delivery(t, did).Attempts == 1 })
	if d := te.delivery(t, did); d.State != StatePending || d.LastStatus != 500 || string(d.Message.Data) != `{"n":1}` {
		t.Fatalf("after a failed attempt: %+v", d)
	}
	assertAbsent(t, te, prefixD+did)
	te.clock.Advance(2 * time.Second)
	te.Kick()
	eventually(t, "failed", func() bool { return te.delivery(t, did).State == StateFailed })
	assertExpires(t, te, prefixD+did)

	up.Store(true)
	if n, err := te.Redeliver(StaticID("s")); n != 1 || err != nil {
		t.Fatalf("redelivered %d, %v", n, err)
	}
	eventually(t, "delivered", func() bool { return te.delivery(t, did).State == StateDelivered })
	if got := rcv.got(); len(got) != 3 || got[2].Body != `{"n":1}` {
		t.Fatalf("the receiver got %+v", got)
	}
	assertExpires(t, te, prefixD+did)
	var rec Delivery
	if err := te.db.View(func(txn *badger.Txn) error { _, err := getDelivery(txn, did, &rec); return err }); err != nil || rec.State != StateDelivered {
		t.Fatalf("record after the redelivery: %+v, %v", rec, err)
	}
}

// assertExpires checks that a settled record will be removed by retention.
func assertExpires(t *testing.T, te *testEngine, key string) {
	t.Helper()
	err := te.db.View(func(txn *badger.Txn) error {
		item, err := txn.Get([]byte(key))
		if err != nil {
			return err
		}
		if item.ExpiresAt() == 0 {
			return fmt.Errorf("%s never expires", key)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// What a delivered message leaves behind expires. A message published
// without an ID never had a record for its deliveries, and gets none when
// they are delivered; one published with an ID keeps a record, so that a
// repeat of an interrupted publish does not queue them again.
func TestRetentionOfDeliveredMessages(t *testing.T) {
	for _, id := range []string{"", "order-1"} {
		t.Run("id="+id, func(t *testing.T) {
			rcv := newReceiver(t, nil)
			te := newTestEngine(t, Config{Retention: time.Hour, Subscriptions: []Subscription{sub("s", rcv.URL)}})
			m := msg("x", `{}`)
			m.ID = id
			res, _ := te.Publish(m)
			did := deliveryID(res.ID, StaticID("s"))
			eventually(t, "delivered", func() bool { return te.delivery(t, did).State == StateDelivered })
			if id == "" {
				assertAbsent(t, te, prefixD+did)
			} else {
				assertExpires(t, te, prefixD+did)
			}
			atts, _ := te.store.Attempts(did)
			if len(atts) != 1 {
				t.Fatalf("attempts %+v", atts)
			}
			assertExpires(t, te, string(attemptKey(&atts[0])))
			assertExpires(t, te, string(msgKey("", res.ID)))
		})
	}
}

// assertAbsent checks that nothing is stored under key.
func assertAbsent(t *testing.T, te *testEngine, key string) {
	t.Helper()
	err := te.db.View(func(txn *badger.Txn) error {
		_, err := txn.Get([]byte(key))
		return err
	})
	if !errors.Is(err, badger.ErrKeyNotFound) {
		t.Fatalf("%s: %v, want nothing stored", key, err)
	}
}

// An attempt that started before the endpoint was re-enabled cannot
// disable it again when its 410 comes back after the re-enable: the
// operator acted on newer knowledge.
func TestEnableOutlivesAnswersFromBefore(t *testing.T) {
	held := make(chan struct{})
	var fixed atomic.Bool
	// The first attempt is held, so the second is made beside it (a free
	// slot) and its 410 disables the endpoint.
	rcv := newReceiver(t, func(n int, w http.ResponseWriter) {
		if n == 1 {
			<-held
		}
		if n <= 2 || !fixed.Load() {
			w.WriteHeader(http.StatusGone)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	te := newTestEngine(t, Config{Retry: []time.Duration{time.Minute}, Subscriptions: []Subscription{sub("shop", rcv.URL, "x")}})
	id := StaticID("shop")
	first, _ := te.Publish(msg("x", `{"n":1}`))
	second, _ := te.Publish(msg("x", `{"n":2}`))
	eventually(t, "the second attempt's 410 disabling it, the first held", func() bool {
		h, _ := te.Health(id)
		return h.Disabled && len(rcv.got()) == 2
	})
	te.clock.Advance(time.Second)
	fixed.Store(true)
	if err := te.Enable(id); err != nil {
		t.Fatal(err)
	}
	close(held) // the held attempt now gets its 410
	for _, m := range []PublishResult{first, second} {
		did := deliveryID(m.ID, id)
		eventually(t, "the retries after the enable", func() bool {
			te.clock.Advance(time.Minute)
			te.Kick()
			return te.delivery(t, did).State == StateDelivered
		})
	}
	if h, _ := te.Health(id); h.Disabled {
		t.Fatalf("disabled again by an answer from before the enable: %+v", h)
	}
}

// 410 disables at once; the disabled endpoint's deliveries are kept and go
// out after it is re-enabled; endpoint.disabled reaches its listeners.
func TestGoneDisablesAndEnableResumes(t *testing.T) {
	var gone atomic.Bool
	gone.Store(true)
	rcv := newReceiver(t, func(n int, w http.ResponseWriter) {
		if gone.Load() {
			w.WriteHeader(410)
			return
		}
		w.WriteHeader(204)
	})
	ops := newReceiver(t, nil)
	te := newTestEngine(t, Config{Subscriptions: []Subscription{
		sub("shop", rcv.URL, "order.status"),
		sub("ops", ops.URL, EventEndpointDisabled),
	}})
	first, _ := te.Publish(msg("order.status", `{"n":1}`))
	eventually(t, "disabled", func() bool { h, _ := te.Health(StaticID("shop")); return h.Disabled })
	h, _ := te.Health(StaticID("shop"))
	if !strings.Contains(h.Reason, "410") {
		t.Fatalf("reason %q", h.Reason)
	}
	eventually(t, "endpoint.disabled event", func() bool { return len(ops.got()) == 1 })
	var ev map[string]any
	json.Unmarshal([]byte(ops.got()[0].Body), &ev)
	if ops.got()[0].Header.Get("X-Event-Name") != EventEndpointDisabled || ev["subscription_id"] != StaticID("shop") {
		t.Fatalf("event %v %v", ops.got()[0].Header, ev)
	}

	// While disabled, new messages queue up and nothing is attempted.
	second, _ := te.Publish(msg("order.status", `{"n":2}`))
	te.clock.Advance(time.Hour)
	te.Kick()
	time.Sleep(50 * time.Millisecond)
	if n := len(rcv.got()); n != 1 {
		t.Fatalf("a disabled endpoint got %d requests", n)
	}
	if n, _ := te.store.QueueDepth(StaticID("shop")); n != 2 {
		t.Fatalf("queue depth %d, want both deliveries kept", n)
	}

	// An enable that cannot be stored changes nothing, in memory either.
	te.store.writeFault = func(op string) error {
		if op == "health" {
			return errors.New("no space left on device")
		}
		return nil
	}
	if err := te.Enable(StaticID("shop")); err == nil {
		t.Fatal("enable succeeded without being stored")
	}
	if h, _ := te.Health(StaticID("shop")); !h.Disabled {
		t.Fatalf("health after a failed enable %+v", h)
	}
	te.store.writeFault = nil

	gone.Store(false)
	if err := te.Enable(StaticID("shop")); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{first.ID, second.ID} {
		did := deliveryID(id, StaticID("shop"))
		eventually(t, "delivery after enable", func() bool { return te.delivery(t, did).State == StateDelivered })
	}
	if h, _ := te.Health(StaticID("shop")); h.Disabled || !h.FailingSince.IsZero() {
		t.Fatalf("health after enable %+v", h)
	}
}

func TestDisableAfterFailingTooLong(t *testing.T) {
	rcv := newReceiver(t, status(500))
	te := newTestEngine(t, Config{
		Retry: []time.Duration{time.Hour, time.Hour, time.Hour}, DisableAfter: 90 * time.Minute,
		Subscriptions: []Subscription{sub("s", rcv.URL)},
	})
	res, _ := te.Publish(msg("x", `{}`))
	did := deliveryID(res.ID, StaticID("s"))
	for i := 1; i <= 2; i++ {
		eventually(t, "attempt", func() bool { return te.delivery(t, did).Attempts == i })
		if h, _ := te.Health(StaticID("s")); h.Disabled {
			t.Fatalf("disabled after %d attempts (%v of failing)", i, te.clock.Now().Sub(t0))
		}
		te.clock.Advance(70 * time.Minute)
		te.Kick()
	}
	eventually(t, "attempt 3", func() bool { return te.delivery(t, did).Attempts == 3 })
	eventually(t, "disabled", func() bool { h, _ := te.Health(StaticID("s")); return h.Disabled })
	if d := te.delivery(t, did); d.State != StatePending {
		t.Fatalf("the delivery of a disabled endpoint was dropped: %+v", d)
	}
}

// A receiver that never answers must not hold up the others.
func TestNoHeadOfLineBlocking(t *testing.T) {
	release := make(chan struct{})
	slow := newReceiver(t, func(int, http.ResponseWriter) { <-release })
	defer close(release)
	fast := newReceiver(t, nil)
	te := newTestEngine(t, Config{
		Workers: 4, EndpointConcurrency: 2, Timeout: time.Minute,
		Subscriptions: []Subscription{sub("slow", slow.URL), sub("fast", fast.URL)},
	})
	for i := 0; i < 20; i++ {
		te.Publish(msg("x", fmt.Sprintf(`{"i":%d}`, i)))
	}
	eventually(t, "the fast endpoint's 20 deliveries", func() bool { return len(fast.got()) == 20 })
	if n := len(slow.got()); n > 2 {
		t.Fatalf("slow endpoint has %d requests in flight, limit 2", n)
	}
}

// Messages published while a slow receiver holds an attempt use the
// subscription's free slots at once, not after that attempt ends.
func TestNewMessagesUseFreeSlotsWhileAnAttemptIsHeld(t *testing.T) {
	release := make(chan struct{})
	slow := newReceiver(t, func(int, http.ResponseWriter) { <-release })
	defer close(release)
	te := newTestEngine(t, Config{
		EndpointConcurrency: 4, Timeout: time.Minute,
		Subscriptions: []Subscription{sub("slow", slow.URL)},
	})
	te.Publish(msg("x", `{"i":0}`))
	eventually(t, "the first attempt held", func() bool { return len(slow.got()) == 1 })
	for i := 1; i < 6; i++ {
		te.Publish(msg("x", fmt.Sprintf(`{"i":%d}`, i)))
	}
	eventually(t, "four attempts in flight", func() bool { return len(slow.got()) == 4 })
	time.Sleep(50 * time.Millisecond) // room for a fifth, which must not come
	if n := len(slow.got()); n != 4 {
		t.Fatalf("%d attempts in flight, limit 4", n)
	}
}

// A retry comes due on time while another attempt of the same
// subscription is held by a slow receiver. It runs on the wall clock: the
// retry is 100ms away, the held attempt's timeout a minute.
func TestRetryDueWhileAnAttemptIsHeld(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	rcv := newReceiver(t, func(n int, w http.ResponseWriter) {
		switch n {
		case 1: // the slow one
			<-release
		case 2: // the message that fails once
			w.WriteHeader(http.StatusInternalServerError)
		default:
			w.WriteHeader(http.StatusNoContent)
		}
	})
	e := newWallClockEngine(t, Config{
		Retry: []time.Duration{100 * time.Millisecond}, Timeout: time.Minute,
		Subscriptions: []Subscription{sub("s", rcv.URL)},
	})
	e.Publish(msg("x", `{"slow":true}`))
	eventually(t, "the slow attempt held", func() bool { return len(rcv.got()) == 1 })
	failing, _ := e.Publish(msg("x", `{"fails":"once"}`))
	eventually(t, "the first attempt of the other", func() bool { return len(rcv.got()) == 2 })
	eventually(t, "the retry, with the slow attempt still held", func() bool {
		d, _, _ := e.store.Delivery(deliveryID(failing.ID, StaticID("s")))
		return d.State == StateDelivered
	})
}

// A retry stored while the lane is reading its queue is not lost: that
// read skipped the delivery, which was still in flight when it began, so
// the lane must read again rather than take the read's result as final.
// Nothing else wakes the lane here; without the second read the retry
// waits for the next message or a restart.
func TestRetryStoredDuringALoadIsAttempted(t *testing.T) {
	release := make(chan struct{})
	rcv := newReceiver(t, func(n int, w http.ResponseWriter) {
		if n == 1 {
			<-release
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	// The lane asks whether it may load (the disk-space guard) at the start
	// of every read of its queue: the test holds one read there.
	var hold atomic.Bool
	loading, resume := make(chan struct{}), make(chan struct{})
	e := newGuardedTestEngine(t, Config{Retry: []time.Duration{10 * time.Millisecond},
		Subscriptions: []Subscription{sub("a", rcv.URL)}}, func() error {
		if hold.CompareAndSwap(true, false) {
			close(loading)
			<-resume
		}
		return nil
	})
	clock := e.clock

	if _, err := e.Publish(msg("x", `{"n":1}`)); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the first attempt held by the receiver", func() bool { return len(rcv.got()) == 1 })
	hold.Store(true)
	e.Kick() // a read with the attempt in flight
	<-loading
	close(release) // the attempt fails; its retry is stored while the read waits
	eventually(t, "the failure settled", func() bool { return e.inFlight(StaticID("a")) == 0 })
	clock.Advance(time.Second) // the retry is due
	close(resume)
	eventually(t, "the retry", func() bool { return len(rcv.got()) == 2 })
}

// While the store keeps refusing to record outcomes (a failing disk), the
// lane does not send the same deliveries again at full speed, and new
// ones wait too: it pauses, twice as long after each refusal in a row,
// and sends them once outcomes can be stored. A stored outcome brings the
// pause back to its shortest.
func TestRefusedSettlesPauseTheLane(t *testing.T) {
	rcv := newReceiver(t, nil)
	te := newTestEngine(t, Config{Subscriptions: []Subscription{sub("s", rcv.URL)}})
	var refusing atomic.Bool
	var refused atomic.Int64
	refusing.Store(true)
	te.store.writeFault = func(op string) error {
		if op == "settle" && refusing.Load() {
			refused.Add(1)
			return errors.New("input/output error")
		}
		return nil
	}
	// Sent, then out of flight once the settler has paused the lane.
	pausedAfter := func(requests int) {
		t.Helper()
		eventually(t, "the outcomes refused", func() bool {
			return len(rcv.got()) == requests && refused.Load() > 0 && te.inFlight(StaticID("s")) == 0
		})
	}
	requests := func(want int, when string) {
		t.Helper()
		if n := len(rcv.got()); n != want {
			t.Fatalf("%d requests %s, want %d", n, when, want)
		}
	}
	later := func(d time.Duration) { te.clock.Advance(d); te.Kick() }
	delivered := func(m PublishResult) {
		t.Helper()
		did := deliveryID(m.ID, StaticID("s"))
		eventually(t, "delivered after the pause", func() bool { return te.delivery(t, did).State == StateDelivered })
	}
	// What operators see: the admin API's store_pause, the gauge, the log.
	core, logs := observer.New(zapcore.InfoLevel)
	te.SetLogger(zap.New(core))
	shown := func(pauses int, pause time.Duration) {
		t.Helper()
		p, ok := te.StorePause(StaticID("s"))
		if want := (StorePause{te.clock.Now().Add(pause), pauses}); pauses > 0 && (!ok || !p.Until.Equal(want.Until) || p.Pauses != pauses) {
			t.Fatalf("pause shown: %+v %v, want %+v", p, ok, want)
		}
		if pauses == 0 && ok {
			t.Fatalf("a pause shown after it ended: %+v", p)
		}
		if n := te.PausedSubscriptions(); n != min(pauses, 1) {
			t.Fatalf("%d subscriptions counted as paused, want %d", n, min(pauses, 1))
		}
		warned := logs.FilterMessage("deliveries paused after a store failure").FilterField(zap.String("subscription", StaticID("s")))
		if warned.Len() != pauses && pauses > 0 {
			t.Fatalf("%d pauses logged, want %d: %v", warned.Len(), pauses, logs.All())
		}
	}

	shown(0, 0)
	first, err := te.Publish(msg("x", `{"n":1}`))
	if err != nil {
		t.Fatal(err)
	}
	pausedAfter(1)
	shown(1, storeErrorPause)
	p, _ := te.StorePause(StaticID("s"))
	if b, _ := json.Marshal(p); string(b) != `{"until":"`+te.clock.Now().Add(storeErrorPause).Format(time.RFC3339Nano)+`","pauses":1}` {
		t.Fatalf("the admin API would show the pause as %s", b)
	}
	second, err := te.Publish(msg("x", `{"n":2}`))
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond) // would either be sent?
	requests(1, "while outcomes could not be stored")

	later(storeErrorPause)
	pausedAfter(3) // both sent, refused again
	shown(2, 2*storeErrorPause)
	later(storeErrorPause)
	time.Sleep(100 * time.Millisecond)
	requests(3, "halfway through the second, longer pause")
	shown(2, storeErrorPause)

	refusing.Store(false)
	later(storeErrorPause)
	delivered(first)
	delivered(second)
	requests(5, "once outcomes could be stored")
	shown(0, 0)

	refusing.Store(true)
	third, err := te.Publish(msg("x", `{"n":3}`))
	if err != nil {
		t.Fatal(err)
	}
	pausedAfter(6)
	refusing.Store(false)
	later(storeErrorPause)
	delivered(third)
}

// An operator's retry ends a lane's pause after store failures: the
// deliveries go out at once rather than when the pause ends.
func TestRetryNowEndsAStoreFailurePause(t *testing.T) {
	rcv := newReceiver(t, nil)
	te := newTestEngine(t, Config{Subscriptions: []Subscription{sub("s", rcv.URL)}})
	var refusing atomic.Bool
	refusing.Store(true)
	te.store.writeFault = func(op string) error {
		if op == "settle" && refusing.Load() {
			return errors.New("input/output error")
		}
		return nil
	}
	m, err := te.Publish(msg("x", `{"n":1}`))
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "the outcome refused", func() bool { return len(rcv.got()) == 1 && te.inFlight(StaticID("s")) == 0 })
	refusing.Store(false)
	if _, ok := te.StorePause(StaticID("s")); !ok || te.PausedSubscriptions() != 1 {
		t.Fatal("no pause shown after the refusal")
	}
	if _, err := te.RetryNow(context.Background(), StaticID("s")); err != nil {
		t.Fatal(err)
	}
	if p, ok := te.StorePause(StaticID("s")); ok || te.PausedSubscriptions() != 0 {
		t.Fatalf("the retry ended the pause, yet it is shown: %+v", p)
	}
	did := deliveryID(m.ID, StaticID("s"))
	eventually(t, "delivered with the clock standing still", func() bool { return te.delivery(t, did).State == StateDelivered })
}

// A message acknowledged before a crash is delivered after the restart.
func TestDeliveredAfterCrash(t *testing.T) {
	dir := t.TempDir()
	clock := testclock.New(t0)
	var up atomic.Bool
	rcv := newReceiver(t, func(n int, w http.ResponseWriter) {
		if !up.Load() {
			w.WriteHeader(503)
			return
		}
		w.WriteHeader(204)
	})
	cfg := Config{Retry: []time.Duration{time.Minute}, Subscriptions: []Subscription{sub("s", rcv.URL)}}
	te := openTestEngine(t, dir, cfg, clock)
	var ids []string
	for i := 0; i < 50; i++ {
		res, err := te.Publish(msg("x", fmt.Sprintf(`{"i":%d}`, i)))
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, res.ID)
	}
	// Mid-flight: some attempts made, some not; then the process dies.
	te.close()

	up.Store(true)
	clock.Advance(2 * time.Minute)
	te = openTestEngine(t, dir, cfg, clock)
	for _, id := range ids {
		did := deliveryID(id, StaticID("s"))
		eventually(t, "delivery after restart", func() bool { return te.delivery(t, did).State == StateDelivered })
	}
	seen := map[string]bool{}
	for _, h := range rcv.got() {
		seen[h.Header.Get("Webhook-Id")] = true
	}
	for _, id := range ids {
		if !seen[id] {
			t.Fatalf("message %s never reached the receiver", id)
		}
	}
}

// A fan-out larger than one badger transaction is stored in several and
// every delivery goes out.
func TestLargeFanOut(t *testing.T) {
	rcv := newReceiver(t, nil)
	var subs []Subscription
	for i := 0; i < 1500; i++ {
		subs = append(subs, sub(fmt.Sprint("s", i), rcv.URL))
	}
	te := newTestEngine(t, Config{Subscriptions: subs, Workers: 32})
	big := `{"blob":"` + strings.Repeat("x", 4000) + `"}`
	res, err := te.Publish(msg("x", big))
	if err != nil || res.Deliveries != 1500 {
		t.Fatalf("publish: %+v %v", res, err)
	}
	eventually(t, "1500 deliveries", func() bool { return len(rcv.got()) == 1500 })
}

// A large fan-out whose later transaction fails answers the publisher with
// an error; what its earlier transactions stored is counted and delivered.
func TestFanOutFailingMidwayDeliversWhatItStored(t *testing.T) {
	const fanOut = 40
	// Held from the second message on, so that what is queued can be
	// counted before any of it is delivered.
	release := make(chan struct{})
	rcv := newReceiver(t, func(n int, w http.ResponseWriter) {
		if n > fanOut {
			<-release
		}
		w.WriteHeader(http.StatusNoContent)
	})
	var releaseOnce sync.Once
	letGo := func() { releaseOnce.Do(func() { close(release) }) }
	t.Cleanup(letGo) // before the receiver's Close, which waits for held requests
	var subs []Subscription
	for i := 0; i < fanOut; i++ {
		subs = append(subs, sub(fmt.Sprint("s", i), rcv.URL))
	}
	te := newTestEngine(t, Config{Subscriptions: subs})
	// Every lane done with a first message: none is left running to find
	// the stored deliveries by chance.
	te.Publish(msg("x", `{}`))
	eventually(t, "the first message delivered", func() bool { return len(rcv.got()) == len(subs) })
	eventually(t, "every lane idle", func() bool {
		te.mu.Lock()
		defer te.mu.Unlock()
		return te.activeLanes == 0
	})
	refusePublishCommit(te, 2)
	te.store.txnSize = 8 << 10 // a few deliveries per transaction
	big := `{"blob":"` + strings.Repeat("x", 100<<10) + `"}`
	if _, err := te.Publish(msg("x", big)); err == nil {
		t.Fatal("publish succeeded with a transaction refused")
	}
	depths, err := te.store.QueueDepths()
	stored := 0
	for _, n := range depths {
		stored += n
	}
	if err != nil || stored == 0 || stored >= len(subs) {
		t.Fatalf("%d deliveries stored (%v): the test wants some, not all", stored, err)
	}
	if got := te.QueueDepth(); got != int64(stored) {
		t.Fatalf("queue depth %d, %d stored", got, stored)
	}
	letGo()
	eventually(t, "the stored deliveries", func() bool { return len(rcv.got()) == len(subs)+stored })
	eventually(t, "an empty queue", func() bool { return te.QueueDepth() == 0 })
}

// Publishing again with the same ID after a fan-out failed midway stores
// what is missing and nothing twice: every subscriber gets the message once.
func TestRepublishCompletesAnInterruptedFanOut(t *testing.T) {
	for _, tc := range []struct {
		name string
		data int
	}{
		{"payload in each delivery", sharedPayloadMin / 2},
		{"shared payload", 100 << 10},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rcv := newReceiver(t, nil)
			var subs []Subscription
			for i := 0; i < 40; i++ {
				subs = append(subs, sub(fmt.Sprint("s", i), rcv.URL))
			}
			te := newTestEngine(t, Config{Subscriptions: subs})
			te.store.txnSize = 8 << 10 // a few deliveries per transaction
			refusePublishCommit(te, 2)
			m := msg("x", `{"blob":"`+strings.Repeat("x", tc.data)+`"}`)
			m.ID = "order-42"
			if _, err := te.Publish(m); err == nil {
				t.Fatal("publish succeeded with a transaction refused")
			}
			res, err := te.Publish(m)
			if err != nil || res.Duplicate || res.Deliveries != len(subs) {
				t.Fatalf("publishing again: %+v, %v", res, err)
			}
			eventually(t, "every subscriber", func() bool { return len(rcv.got()) >= len(subs) })
			eventually(t, "an empty queue", func() bool { return te.QueueDepth() == 0 })
			if n := len(rcv.got()); n != len(subs) {
				t.Fatalf("%d deliveries for %d subscribers", n, len(subs))
			}
			for _, h := range rcv.got() {
				if h.Body != string(m.Data) {
					t.Fatalf("a subscriber got %d bytes, not the %d published", len(h.Body), len(m.Data))
				}
			}
			for _, s := range subs {
				if d := te.delivery(t, deliveryID(m.ID, s.ID)); d.State != StateDelivered || d.Attempts != 1 {
					t.Fatalf("delivery to %s: %+v", s.ID, d)
				}
			}
		})
	}
}

// A publish with an ID whose transaction conflicts with a concurrent write
// of one of its deliveries (the same message published twice at once) is
// repeated: it finds that delivery and stores the others, once each.
func TestPublishRepeatsAConflictingTransaction(t *testing.T) {
	rcv := newReceiver(t, nil)
	subs := []Subscription{sub("a", rcv.URL), sub("b", rcv.URL), sub("c", rcv.URL)}
	te := newTestEngine(t, Config{Subscriptions: subs})
	m := msg("x", `{"n":1}`)
	m.ID = "order-7"
	concurrent := false // publishes run on this goroutine
	te.store.writeFault = func(op string) error {
		if op != "publish" || concurrent {
			return nil
		}
		concurrent = true
		// What the other publish of order-7 stored for "a", committed
		// after this one looked and before it commits.
		other := m
		other.CreatedAt = te.clock.Now()
		d := Delivery{ID: deliveryID(m.ID, subs[0].ID), SubscriptionID: subs[0].ID, Message: other,
			State: StatePending, NextAttempt: other.CreatedAt, CreatedAt: other.CreatedAt, UpdatedAt: other.CreatedAt}
		return te.db.Update(func(txn *badger.Txn) error { return pendingEntries(&d).put(txn) })
	}
	res, err := te.Publish(m)
	if err != nil || res.Deliveries != len(subs) {
		t.Fatalf("publish: %+v, %v", res, err)
	}
	for _, s := range subs {
		did := deliveryID(m.ID, s.ID)
		eventually(t, "delivered to "+s.Name, func() bool { return te.delivery(t, did).State == StateDelivered })
		if d := te.delivery(t, did); d.Attempts != 1 {
			t.Fatalf("delivery to %s: %+v", s.Name, d)
		}
	}
	if n := len(rcv.got()); n != len(subs) {
		t.Fatalf("%d requests for %d subscribers", n, len(subs))
	}
}

// A fan-out runs at most maxLanes lanes at once; the others wait their
// turn and are all served once the receiver answers.
func TestFanOutBoundsRunningLanes(t *testing.T) {
	release := make(chan struct{})
	rcv := newReceiver(t, func(_ int, w http.ResponseWriter) { <-release; w.WriteHeader(204) })
	var subs []Subscription
	for i := 0; i < 300; i++ {
		subs = append(subs, sub(fmt.Sprint("s", i), rcv.URL))
	}
	te := newTestEngine(t, Config{Subscriptions: subs, Workers: 4, Timeout: time.Minute})
	if _, err := te.Publish(msg("x", `{}`)); err != nil {
		t.Fatal(err)
	}
	limit := te.maxLanes()
	lanes := func() (active, waiting int) {
		te.mu.Lock()
		defer te.mu.Unlock()
		return te.activeLanes, len(te.waitingLanes)
	}
	eventually(t, "the workers busy", func() bool { return len(rcv.got()) == 4 })
	if active, waiting := lanes(); active != limit || waiting != 300-limit {
		close(release)
		t.Fatalf("%d lanes running and %d waiting, want %d and %d", active, waiting, limit, 300-limit)
	}
	close(release)
	eventually(t, "300 deliveries", func() bool { return len(rcv.got()) == 300 })
	eventually(t, "every lane ended", func() bool { a, w := lanes(); return a == 0 && w == 0 })
}

// A subscription whose URL changes is delivered to the new URL from then
// on (parsed URLs are cached per subscription version).
func TestChangedURLIsUsed(t *testing.T) {
	before, after := newReceiver(t, nil), newReceiver(t, nil)
	te := newTestEngine(t, Config{})
	s := Subscription{ID: "sub_1", Tenant: "t", URL: before.URL, Events: []string{"*"}}
	if err := te.PutSubscription(s); err != nil {
		t.Fatal(err)
	}
	m := msg("x", `{"n":1}`)
	m.Tenant = "t"
	te.Publish(m)
	eventually(t, "the first delivery", func() bool { return len(before.got()) == 1 })
	s.URL = after.URL + "/moved"
	if err := te.PutSubscription(s); err != nil {
		t.Fatal(err)
	}
	te.Publish(m)
	eventually(t, "the delivery to the new URL", func() bool { return len(after.got()) == 1 })
	if n := len(before.got()); n != 1 {
		t.Fatalf("the old URL got %d deliveries, want 1", n)
	}
}

// Deliveries kept while a registered subscription was deleted go out as
// soon as it is registered again (IDs are per tenant and event, so an
// API client re-registering gets the same one), not at its next event.
func TestKeptDeliveriesResumeWhenRegisteredAgain(t *testing.T) {
	var up atomic.Bool
	rcv := newReceiver(t, failUntil(&up, http.StatusServiceUnavailable))
	te := newTestEngine(t, Config{Retry: []time.Duration{time.Minute}})
	s := Subscription{ID: "sub_1", Tenant: "t", URL: rcv.URL, Events: []string{"*"}}
	if err := te.PutSubscription(s); err != nil {
		t.Fatal(err)
	}
	m := msg("x", `{"n":1}`)
	m.Tenant = "t"
	res, _ := te.Publish(m)
	did := deliveryID(res.ID, s.ID)
	eventually(t, "the failed first attempt", func() bool { return te.delivery(t, did).Attempts == 1 })
	if err := te.DeleteSubscription(s.ID); err != nil {
		t.Fatal(err)
	}
	te.clock.Advance(2 * time.Minute) // the retry is due, but nobody to send it to
	te.Kick()
	up.Store(true)
	if err := te.PutSubscription(s); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the kept delivery", func() bool { return te.delivery(t, did).State == StateDelivered })
}

// Deleting a registration deletes its health record and last success,
// also when an attempt to it was in flight and fails after the delete.
func TestDeletedRegistrationLeavesNoHealth(t *testing.T) {
	release := make(chan struct{})
	rcv := newReceiver(t, func(n int, w http.ResponseWriter) {
		switch n {
		case 1:
			w.WriteHeader(http.StatusNoContent) // stores the last success
		case 2:
			w.WriteHeader(http.StatusServiceUnavailable) // starts the failure count
		default:
			<-release
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	})
	te := newTestEngine(t, Config{Retry: []time.Duration{time.Hour}})
	s := Subscription{ID: "sub_1", Tenant: "t", URL: rcv.URL, Events: []string{"*"}}
	if err := te.CreateSubscription(s, 0); err != nil {
		t.Fatal(err)
	}
	publish := func() string { return te.publishTo(t, "t", s.ID) }
	stored := func() (kept []string) {
		err := te.db.View(func(txn *badger.Txn) error {
			for _, key := range []string{prefixHealth + s.ID, prefixSuccess + s.ID} {
				_, err := txn.Get([]byte(key))
				if err == nil {
					kept = append(kept, key)
				} else if !errors.Is(err, badger.ErrKeyNotFound) {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		return kept
	}
	did := publish()
	eventually(t, "delivered", func() bool { return te.delivery(t, did).State == StateDelivered })
	did = publish()
	eventually(t, "failed once", func() bool { return te.delivery(t, did).Attempts == 1 })
	if kept := stored(); len(kept) != 2 {
		t.Fatalf("before the delete the store holds %q, want the health record and last success", kept)
	}

	did = publish()
	eventually(t, "the held attempt", func() bool { return len(rcv.got()) == 3 })
	if err := te.DeleteSubscription(s.ID); err != nil {
		t.Fatal(err)
	}
	close(release)
	eventually(t, "the held attempt settled", func() bool { return te.delivery(t, did).Attempts == 1 })
	if kept := stored(); len(kept) != 0 {
		t.Fatalf("a deleted registration left %q in the store", kept)
	}
	te.healthMu.Lock()
	_, cached := te.health[s.ID]
	te.healthMu.Unlock()
	if cached {
		t.Fatal("a deleted registration's health is still cached")
	}

	// Registered again, it starts clean and its kept deliveries go out.
	rcv.mu.Lock()
	rcv.respond = nil
	rcv.mu.Unlock()
	if err := te.CreateSubscription(s, 0); err != nil {
		t.Fatal(err)
	}
	if h, err := te.Health(s.ID); err != nil || h != (Health{}) {
		t.Fatalf("registered again: health %+v, %v", h, err)
	}
	te.clock.Advance(2 * time.Hour) // past the retry and its jitter
	te.Kick()
	eventually(t, "the kept delivery", func() bool { return te.delivery(t, did).State == StateDelivered })
}

// An attempt to a URL the subscription has since left does not count
// against the URL it has now.
func TestAnswerFromTheOldURLIsNotHeldAgainstTheNew(t *testing.T) {
	release := make(chan struct{})
	old := newReceiver(t, func(_ int, w http.ResponseWriter) {
		<-release
		w.WriteHeader(http.StatusGone)
	})
	moved := newReceiver(t, nil)
	te := newTestEngine(t, Config{Retry: []time.Duration{time.Hour}})
	s := Subscription{ID: "sub_1", Tenant: "t", URL: old.URL, Events: []string{"*"}}
	if err := te.CreateSubscription(s, 0); err != nil {
		t.Fatal(err)
	}
	did := te.publishTo(t, "t", s.ID)
	eventually(t, "the held attempt", func() bool { return len(old.got()) == 1 })
	s.URL = moved.URL
	if err := te.UpdateSubscription(s, false); err != nil {
		t.Fatal(err)
	}
	close(release)
	eventually(t, "the old URL's answer settled", func() bool { return te.delivery(t, did).Attempts == 1 })
	if h, err := te.Health(s.ID); err != nil || h.Disabled || !h.FailingSince.IsZero() {
		t.Fatalf("the old URL's 410 counted against the new one: %+v, %v", h, err)
	}
	te.clock.Advance(2 * time.Hour)
	te.Kick()
	eventually(t, "delivered at the new URL", func() bool { return te.delivery(t, did).State == StateDelivered })
}

// The largest payload a publish accepts (1 MB) is stored and delivered:
// badger's transaction limit follows its memtable size, which is small.
func TestLargestPayloadDelivered(t *testing.T) {
	rcv := newReceiver(t, nil)
	te := newTestEngine(t, Config{Subscriptions: []Subscription{sub("a", rcv.URL), sub("b", rcv.URL)}})
	for _, size := range []int{1<<20 - 200, 1 << 20} {
		big := `{"blob":"` + strings.Repeat("x", size-11) + `"}`
		if _, err := te.Publish(msg("x", big)); err != nil {
			t.Fatalf("publishing %d bytes: %v", len(big), err)
		}
	}
	eventually(t, "4 deliveries", func() bool { return len(rcv.got()) == 4 })
	for _, h := range rcv.got() {
		if len(h.Body) < 1<<20-200 {
			t.Fatalf("a delivery of %d bytes", len(h.Body))
		}
	}
}

// Credentials in a subscription's URL are sent as Basic authentication
// (as Go's client and curl do) unless the subscription sets its own
// Authorization.
func TestURLCredentialsBecomeBasicAuth(t *testing.T) {
	rcv := newReceiver(t, nil)
	withCreds := strings.Replace(rcv.URL, "http://", "http://hook-user:hook%20pass@", 1)
	token := sub("token", withCreds)
	token.Auth = Auth{Token: "T0K"}
	te := newTestEngine(t, Config{Subscriptions: []Subscription{sub("url", withCreds), token}})
	te.Publish(msg("x", `{}`))
	eventually(t, "2 deliveries", func() bool { return len(rcv.got()) == 2 })
	var basic, tok int
	for _, h := range rcv.got() {
		u, p, ok := (&http.Request{Header: h.Header}).BasicAuth()
		switch {
		case ok && u == "hook-user" && p == "hook pass":
			basic++
		case h.Header.Get("Authorization") == `Token token="T0K"`:
			tok++
		default:
			t.Fatalf("Authorization %q", h.Header.Get("Authorization"))
		}
	}
	if basic != 1 || tok != 1 {
		t.Fatalf("%d basic, %d token", basic, tok)
	}
}

// A message to a quiet subscription costs one read of its queue: the read
// that finds it also finds that nothing else is due.
func TestOneQueueReadPerMessage(t *testing.T) {
	rcv := newReceiver(t, nil)
	te := newTestEngine(t, Config{Subscriptions: []Subscription{sub("s", rcv.URL)}})
	idle := func() bool {
		te.mu.Lock()
		defer te.mu.Unlock()
		return te.activeLanes == 0
	}
	eventually(t, "the start-up scan to end", idle)
	for i := 1; i <= 3; i++ {
		before := te.loads.Load()
		te.Publish(msg("x", `{}`))
		eventually(t, "the delivery", func() bool { return len(rcv.got()) == i })
		eventually(t, "the lane to end", idle)
		if n := te.loads.Load() - before; n != 1 {
			t.Fatalf("message %d: %d reads of the queue, want 1", i, n)
		}
	}
}

// Subscriptions on one host share its connections: the transport keeps as
// many idle ones per host as there are workers, not one per subscription's
// concurrency.
func TestConnectionsReusedAcrossSubscriptionsOfOneHost(t *testing.T) {
	var conns atomic.Int64
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.WriteHeader(204)
	}))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.Start()
	t.Cleanup(srv.Close)
	var subs []Subscription
	for i := 0; i < 16; i++ {
		subs = append(subs, sub(fmt.Sprint("s", i), fmt.Sprintf("%s/%d", srv.URL, i)))
	}
	te := newTestEngine(t, Config{Subscriptions: subs, Workers: 16, EndpointConcurrency: 1})
	idle := func() bool {
		te.mu.Lock()
		defer te.mu.Unlock()
		return te.activeLanes == 0
	}
	for i := 0; i < 10; i++ {
		te.Publish(msg("x", `{}`))
		eventually(t, "the lanes to end", func() bool { return idle() && te.QueueDepth() == 0 })
	}
	if n := conns.Load(); n > 32 {
		t.Fatalf("%d connections for 160 deliveries by 16 workers", n)
	}
}

// A settle that fails to be stored (say the disk refused the write) loses
// nothing: after a pause the lane reads its queue again from the start,
// behind its cursor, and makes those attempts again; the queue depth
// counts them until they are stored as delivered.
func TestFailedSettleIsAttemptedAgain(t *testing.T) {
	gate := make(chan struct{})
	rcv := newReceiver(t, func(_ int, w http.ResponseWriter) {
		<-gate
		w.WriteHeader(http.StatusNoContent)
	})
	te := newTestEngine(t, Config{Subscriptions: []Subscription{sub("s", rcv.URL)}})
	var failures atomic.Int64
	te.store.writeFault = func(op string) error {
		if op == "settle" && failures.Add(1) == 1 {
			return errors.New("no space left on device")
		}
		return nil
	}
	const n = 20
	var ids []string
	for i := range n {
		// Distinct due times, so that the lane's cursor moves past the
		// first attempts while they are held at the receiver.
		te.clock.Advance(time.Millisecond)
		res, err := te.Publish(msg("x", fmt.Sprintf(`{"i":%d}`, i)))
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, res.ID)
	}
	eventually(t, "attempts held at the receiver", func() bool { return len(rcv.got()) == 8 })
	close(gate)
	// The lane pauses after the refused write: the store is failing.
	eventually(t, "the attempts settled or refused", func() bool {
		return failures.Load() >= 1 && te.inFlight(StaticID("s")) == 0
	})
	te.clock.Advance(storeErrorPause)
	te.Kick()
	for _, id := range ids {
		did := deliveryID(id, StaticID("s"))
		eventually(t, "every message delivered", func() bool { return te.delivery(t, did).State == StateDelivered })
	}
	if failures.Load() < 2 {
		t.Fatalf("settle ran %d times; the fault was never followed by a good settle", failures.Load())
	}
	if hits := len(rcv.got()); hits <= n {
		t.Fatalf("receiver got %d requests for %d messages: the unrecorded attempts were not made again", hits, n)
	}
	eventually(t, "the queue empty in the store", func() bool {
		return storedQueue(t, te.store) == 0
	})
	// Counted out once, when stored as delivered: not also at the attempt
	// whose outcome was lost.
	eventually(t, "QueueDepth back to 0", func() bool { return te.QueueDepth() == 0 })
}

// Caddy may start its HTTP server before the webhooks app: a restarted
// engine that is configured but not yet started already knows the
// registered subscriptions, so a publish in that moment reaches them and
// the registration API finds them.
func TestRegisteredSubscriptionsKnownBeforeStart(t *testing.T) {
	rcv := newReceiver(t, nil)
	dir := t.TempDir()
	clock := testclock.New(t0)
	te := openTestEngine(t, dir, Config{}, clock)
	s := Subscription{ID: "sub_1", Tenant: "t", URL: rcv.URL, Events: []string{"*"}}
	if err := te.CreateSubscription(s, 0); err != nil {
		t.Fatal(err)
	}
	te.close()

	db, err := store.Open(dir, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	e := NewEngine(NewStore(db.DB), nil, clock)
	defer e.Stop()
	if err := e.Configure(Config{AllowPrivateTargets: true}); err != nil {
		t.Fatal(err)
	}
	m := msg("x", `{"n":1}`)
	m.Tenant = "t"
	res, err := e.Publish(m)
	if err != nil || res.Deliveries != 1 {
		t.Fatalf("publish before Start: %+v, %v; want 1 delivery", res, err)
	}
	s.Events = []string{"y"}
	if err := e.UpdateSubscription(s, false); err != nil {
		t.Fatalf("updating before Start: %v", err)
	}
	if err := e.Start(); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the delivery", func() bool { return len(rcv.got()) == 1 })
	if got, _ := e.Subscription(s.ID); len(got.Events) != 1 || got.Events[0] != "y" {
		t.Fatalf("after Start the subscription is %+v, want the update", got)
	}
}

// An endpoint that keeps succeeding has its last success stored, so the
// admin API can tell when it last worked after a restart too: at most once
// a minute, and within the transactions that record the attempts, so a
// fan-out to many endpoints costs no transaction more.
func TestLastSuccessOutlivesARestart(t *testing.T) {
	dir, clock := t.TempDir(), testclock.New(t0)
	rcv := newReceiver(t, nil)
	cfg := Config{Subscriptions: []Subscription{sub("s", rcv.URL)}}
	te := openTestEngine(t, dir, cfg, clock)
	var healthWrites atomic.Int32
	te.store.writeFault = func(op string) error {
		if op == "health" {
			healthWrites.Add(1)
		}
		return nil
	}
	deliver := func(n int) {
		want := len(rcv.got()) + n
		for range n {
			if _, err := te.Publish(msg("x", `{}`)); err != nil {
				t.Fatal(err)
			}
		}
		eventually(t, "deliveries", func() bool { return len(rcv.got()) == want })
		eventually(t, "settled", func() bool { return storedQueue(t, te.store) == 0 })
	}
	stored := func() time.Time {
		h, err := te.store.health(StaticID("s"))
		if err != nil {
			t.Fatal(err)
		}
		return h.LastSuccess
	}
	deliver(20)
	if got := stored(); !got.Equal(t0) {
		t.Fatalf("stored last success %v, want %v", got, t0)
	}
	clock.Advance(storeSuccessEvery / 2)
	deliver(1)
	if got := stored(); !got.Equal(t0) {
		t.Fatalf("a success half a minute later stored (%v)", got)
	}
	clock.Advance(storeSuccessEvery / 2)
	deliver(1)
	if got := stored(); !got.Equal(t0.Add(storeSuccessEvery)) {
		t.Fatalf("stored last success %v, want the one a minute later", got)
	}
	if n := healthWrites.Load(); n != 0 {
		t.Fatalf("successes wrote the health record %d times", n)
	}
	te.close()

	te = openTestEngine(t, dir, cfg, clock)
	if h, err := te.Health(StaticID("s")); err != nil || !h.LastSuccess.Equal(t0.Add(storeSuccessEvery)) {
		t.Fatalf("health after a restart: %+v, %v; want last_success %v", h, err, t0.Add(storeSuccessEvery))
	}
}

// The failures of one URL are not held against another: a subscription
// registered again, or given a new URL, starts enabled and with no
// failures counted, so that a tenant who fixes its endpoint is not left
// disabled without knowing why. The same URL again keeps its record.
func TestNewURLStartsWithCleanHealth(t *testing.T) {
	gone := newReceiver(t, status(http.StatusGone))
	failing := newReceiver(t, status(http.StatusServiceUnavailable))
	fixed := newReceiver(t, nil)
	te := newTestEngine(t, Config{Retry: []time.Duration{time.Minute, time.Minute}})
	s := Subscription{ID: "sub_1", Tenant: "t", URL: gone.URL, Events: []string{"*"}}
	publish := func() string { return te.publishTo(t, "t", s.ID) }
	health := func() Health {
		h, err := te.Health(s.ID)
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	disable := func() {
		t.Helper()
		s.URL = gone.URL
		if err := te.UpdateSubscription(s, false); err != nil {
			t.Fatal(err)
		}
		publish()
		eventually(t, "disabled by 410", func() bool { return health().Disabled })
	}

	if err := te.CreateSubscription(s, 0); err != nil {
		t.Fatal(err)
	}
	publish()
	eventually(t, "disabled by 410", func() bool { return health().Disabled })

	// The same URL again: still disabled.
	if err := te.UpdateSubscription(s, false); err != nil {
		t.Fatal(err)
	}
	if h := health(); !h.Disabled {
		t.Fatalf("an update that kept the URL enabled it: %+v", h)
	}
	// The same URL, verified (it answered the API's verification with a
	// 2xx): enabled, and disabled again by the next 410.
	if err := te.UpdateSubscription(s, true); err != nil {
		t.Fatal(err)
	}
	if h := health(); h.Disabled || !h.FailingSince.IsZero() || h.EnabledAt.IsZero() {
		t.Fatalf("a verified update left %+v", h)
	}
	publish()
	eventually(t, "disabled by 410 again", func() bool { return health().Disabled })

	// Deleted and registered again with a working URL: delivered.
	if err := te.DeleteSubscription(s.ID); err != nil {
		t.Fatal(err)
	}
	s.URL = fixed.URL
	if err := te.CreateSubscription(s, 0); err != nil {
		t.Fatal(err)
	}
	if h := health(); h.Disabled || !h.FailingSince.IsZero() {
		t.Fatalf("a new registration starts with %+v", h)
	}
	did := publish()
	eventually(t, "delivered to the new registration", func() bool { return te.delivery(t, did).State == StateDelivered })

	// Disabled again, then updated to another URL: delivered there.
	disable()
	s.URL = fixed.URL
	if err := te.UpdateSubscription(s, false); err != nil {
		t.Fatal(err)
	}
	did = publish()
	eventually(t, "delivered after the URL changed", func() bool { return te.delivery(t, did).State == StateDelivered })

	// Failing at one URL, then moved to another that fails too: the first
	// failure there starts its own count.
	s.URL = failing.URL
	if err := te.UpdateSubscription(s, false); err != nil {
		t.Fatal(err)
	}
	publish()
	eventually(t, "failing", func() bool { return !health().FailingSince.IsZero() })
	te.clock.Advance(time.Hour)
	s.URL = failing.URL + "/other"
	if err := te.UpdateSubscription(s, false); err != nil {
		t.Fatal(err)
	}
	if h := health(); !h.FailingSince.IsZero() {
		t.Fatalf("failures of the old URL still counted: %+v", h)
	}

	// The record survives a restart as it is now.
	te.close()
	te = openTestEngine(t, te.dir, Config{}, te.clock)
	if h := health(); h.Disabled || !h.FailingSince.IsZero() {
		t.Fatalf("after a restart: %+v", h)
	}
}

// A static subscription whose URL changes in the config starts afresh, at
// the reload or the restart that brings the new URL; one that keeps its
// URL stays disabled, and its kept deliveries go to the new URL.
func TestStaticNewURLStartsWithCleanHealth(t *testing.T) {
	gone := newReceiver(t, status(http.StatusGone))
	fixed := newReceiver(t, nil)
	config := func(url string) Config {
		return Config{
			Retry: []time.Duration{time.Minute, time.Minute}, AllowPrivateTargets: true,
			Subscriptions: []Subscription{sub("s", url)},
		}
	}
	te := newTestEngine(t, config(gone.URL))
	id := StaticID("s")
	health := func() Health {
		t.Helper()
		h, err := te.Health(id)
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	publish := func() string {
		t.Helper()
		res, err := te.Publish(msg("x", `{}`))
		if err != nil {
			t.Fatal(err)
		}
		return deliveryID(res.ID, id)
	}
	configure := func(url string) {
		t.Helper()
		if err := te.Configure(config(url)); err != nil {
			t.Fatal(err)
		}
	}
	delivered := func(what, did string) {
		t.Helper()
		eventually(t, what, func() bool {
			te.clock.Advance(time.Minute) // past the retry delay of the 410
			te.Kick()
			return te.delivery(t, did).State == StateDelivered
		})
	}

	kept := publish()
	eventually(t, "disabled by 410", func() bool { return health().Disabled })
	if b, _ := json.Marshal(health()); strings.Contains(string(b), gone.URL) {
		t.Fatalf("the health shown to operators names the URL: %s", b)
	}

	// A reload and a restart with the same URL: still disabled, and the
	// reload says so.
	core, logs := observer.New(zapcore.InfoLevel)
	te.SetLogger(zap.New(core))
	configure(gone.URL)
	if h := health(); !h.Disabled {
		t.Fatalf("a reload that kept the URL enabled it: %+v", h)
	}
	if got := logs.FilterMessageSnippet("static subscription is disabled").FilterField(zap.String("subscription", id)).Len(); got != 1 {
		t.Fatalf("a reload that kept a disabled subscription logged %d warnings about it: %v", got, logs.All())
	}
	te.close()
	te = openTestEngine(t, te.dir, config(gone.URL), te.clock)
	if h := health(); !h.Disabled {
		t.Fatalf("a restart that kept the URL enabled it: %+v", h)
	}

	// A reload with another URL: enabled, and the kept delivery goes there.
	core, logs = observer.New(zapcore.InfoLevel)
	te.SetLogger(zap.New(core))
	configure(fixed.URL)
	if h := health(); h.Disabled || !h.FailingSince.IsZero() || h.URL != "" {
		t.Fatalf("a reload to a new URL left %+v", h)
	}
	if logs.FilterMessageSnippet("new URL").Len() != 1 || logs.FilterMessageSnippet("is disabled").Len() != 0 {
		t.Fatalf("a reload to a new URL logged %v", logs.All())
	}
	delivered("the kept delivery at the new URL", kept)

	// Disabled at the old URL again, then a restart with the new one.
	configure(gone.URL)
	kept = publish()
	eventually(t, "disabled by 410 again", func() bool { return health().Disabled })
	te.close()
	te = openTestEngine(t, te.dir, config(fixed.URL), te.clock)
	if h := health(); h.Disabled || !h.FailingSince.IsZero() {
		t.Fatalf("a restart with a new URL left %+v", h)
	}
	delivered("the kept delivery after the restart", kept)

	// A record that does not say where its failures happened (written by
	// an earlier version) cannot tell a new URL: it stays.
	te.close()
	old := Health{Disabled: true, DisabledAt: t0, Reason: "receiver answered 410 Gone", FailingSince: t0}
	db, err := store.Open(te.dir, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := NewStore(db.DB).saveHealth(id, old); err != nil {
		t.Fatal(err)
	}
	db.Close()
	te = openTestEngine(t, te.dir, config(gone.URL+"/elsewhere"), te.clock)
	if h := health(); !h.Disabled {
		t.Fatalf("a record without a URL was cleared: %+v", h)
	}
}

// A removed subscription's lane is dropped, whether it is idle when the
// subscription goes or still has an attempt in flight. Lanes were kept
// until the engine stopped, so churning registrations grew the process
// without bound. A known subscription keeps its lane, and its cursor.
func TestRemovedSubscriptionsLeaveNoLanes(t *testing.T) {
	rcv := newReceiver(t, nil)
	release := make(chan struct{})
	var releaseOnce sync.Once
	let := func() { releaseOnce.Do(func() { close(release) }) }
	held := newReceiver(t, func(int, http.ResponseWriter) { <-release })
	t.Cleanup(let) // before the receiver's Close, which waits for it
	te := newTestEngine(t, Config{Subscriptions: []Subscription{sub("s", rcv.URL)}})
	lanes := func() []string {
		te.mu.Lock()
		defer te.mu.Unlock()
		return slices.Sorted(maps.Keys(te.lanes))
	}
	register := func(id, url, event string) {
		t.Helper()
		if err := te.CreateSubscription(Subscription{ID: id, URL: url, Events: []string{event}}, 0); err != nil {
			t.Fatal(err)
		}
	}
	register("sub_0", held.URL, "held")
	if _, err := te.Publish(msg("held", `{}`)); err != nil {
		t.Fatal(err)
	}
	eventually(t, "sub_0's attempt held", func() bool { return len(held.got()) == 1 })
	const n = 200
	for i := 1; i < n; i++ {
		register(fmt.Sprintf("sub_%d", i), rcv.URL, "*")
	}
	if _, err := te.Publish(msg("x", `{}`)); err != nil {
		t.Fatal(err)
	}
	// s took both events, the others the second.
	eventually(t, "the fan-out delivered", func() bool { return len(rcv.got()) == 2+n-1 })
	eventually(t, "the idle lanes", func() bool { return te.inFlight(StaticID("s")) == 0 && len(lanes()) == n+1 })
	for i := range n {
		if err := te.DeleteSubscription(fmt.Sprintf("sub_%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	if got := lanes(); !slices.Equal(got, []string{StaticID("s"), "sub_0"}) {
		t.Fatalf("lanes left after the deletes: %d, want s's and sub_0's (still in flight)", len(got))
	}
	let()
	eventually(t, "sub_0's lane dropped once idle", func() bool { return slices.Equal(lanes(), []string{StaticID("s")}) })

	// A reload that drops the static subscription drops its lane.
	if err := te.Configure(Config{AllowPrivateTargets: true}); err != nil {
		t.Fatal(err)
	}
	if got := lanes(); len(got) != 0 {
		t.Fatalf("lanes left after the reload: %v", got)
	}
}
