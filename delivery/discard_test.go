package delivery

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// A removed subscription's backlog is failed by Discard, in several
// batches, without losing the payloads: Redeliver brings it back.
func TestDiscardRemovedSubscription(t *testing.T) {
	var up atomic.Bool
	rcv := newReceiver(t, failUntil(&up, http.StatusServiceUnavailable))
	te := newTestEngine(t, Config{Retry: []time.Duration{time.Hour}})
	const n = 200 // 3 KB each: several discard batches
	s := refusedBacklog(t, te, rcv, n, 3000)
	if _, err := te.Discard(s.ID); !errors.Is(err, ErrSubscriptionActive) {
		t.Fatalf("discarding an active subscription: %v", err)
	}
	if err := te.DeleteSubscription(s.ID); err != nil {
		t.Fatal(err)
	}
	var got int
	var err error
	eventually(t, "the last attempts to settle", func() bool {
		got, err = te.Discard(s.ID)
		return !errors.Is(err, ErrAttemptsInFlight)
	})
	if err != nil || got != n {
		t.Fatalf("discarded %d, %v; want %d", got, err, n)
	}
	if d := te.QueueDepth(); d != 0 {
		t.Fatalf("queue depth %d after the discard", d)
	}
	if d, _ := te.store.QueueDepth(s.ID); d != 0 {
		t.Fatalf("%d entries left in the queue", d)
	}
	failed, err := te.store.FailedDeliveries(s.ID, 1000)
	if err != nil || len(failed) != n {
		t.Fatalf("%d failed deliveries, %v; want %d", len(failed), err, n)
	}
	for _, d := range failed {
		if d.LastError != ReasonDiscarded || d.Attempts != 1 {
			t.Fatalf("discarded delivery: %+v", d)
		}
	}
	if again, err := te.Discard(s.ID); again != 0 || err != nil {
		t.Fatalf("second discard: %d, %v", again, err)
	}

	up.Store(true)
	if err := te.PutSubscription(s); err != nil {
		t.Fatal(err)
	}
	if r, err := te.Redeliver(s.ID); r != n || err != nil {
		t.Fatalf("redelivered %d, %v", r, err)
	}
	eventually(t, "the redelivered backlog", func() bool { return len(rcv.got()) == 2*n })
	for _, h := range rcv.got()[n:] {
		if !strings.Contains(h.Body, strings.Repeat("p", 3000)) {
			t.Fatalf("redelivered without its payload: %.60s", h.Body)
		}
	}
	eventually(t, "an empty queue", func() bool { return te.QueueDepth() == 0 })
}

// A disabled subscription's backlog, new deliveries included, can be
// discarded while it stays registered.
func TestDiscardDisabledSubscription(t *testing.T) {
	rcv := newReceiver(t, status(http.StatusGone))
	te := newTestEngine(t, Config{Subscriptions: []Subscription{sub("gone", rcv.URL)}})
	id := StaticID("gone")
	te.Publish(msg("x", `{"n":1}`))
	eventually(t, "the 410 disabling it", func() bool {
		h, _ := te.Health(id)
		return h.Disabled
	})
	for i := range 3 {
		te.Publish(msg("x", fmt.Sprintf(`{"n":%d}`, i+2)))
	}
	// 4 messages and the endpoint.disabled event ("*" takes it too).
	eventually(t, "5 queued", func() bool { return te.QueueDepth() == 5 })
	if got, err := te.Discard(id); got != 5 || err != nil {
		t.Fatalf("discarded %d, %v; want 5", got, err)
	}
	if d, _ := te.store.QueueDepth(id); d != 0 || te.QueueDepth() != 0 {
		t.Fatalf("queue after the discard: %d stored, %d counted", d, te.QueueDepth())
	}
}

// While an attempt is in flight its outcome would put the delivery back
// after a discard: Discard refuses until it has been settled.
func TestDiscardWaitsForAttemptsInFlight(t *testing.T) {
	release := make(chan struct{})
	rcv := newReceiver(t, func(n int, w http.ResponseWriter) {
		if n == 1 {
			<-release
		}
		w.WriteHeader(http.StatusServiceUnavailable)
	})
	te := newTestEngine(t, Config{Retry: []time.Duration{time.Hour}, Timeout: time.Minute})
	s := Subscription{ID: "sub_1", Tenant: "t", URL: rcv.URL, Events: []string{"*"}}
	if err := te.PutSubscription(s); err != nil {
		t.Fatal(err)
	}
	m := msg("x", `{}`)
	m.Tenant = "t"
	te.Publish(m)
	eventually(t, "the attempt held by the receiver", func() bool { return len(rcv.got()) == 1 })
	if err := te.DeleteSubscription(s.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := te.Discard(s.ID); !errors.Is(err, ErrAttemptsInFlight) {
		close(release)
		t.Fatalf("discard with an attempt in flight: %v", err)
	}
	close(release)
	eventually(t, "the discard once the attempt settled", func() bool {
		n, err := te.Discard(s.ID)
		return n == 1 && err == nil
	})
	if te.QueueDepth() != 0 {
		t.Fatalf("queue depth %d", te.QueueDepth())
	}
}

// QueueDepths finds the backlog of subscriptions nobody lists any more.
func TestQueueDepthsIncludeRemovedSubscriptions(t *testing.T) {
	rcv := newReceiver(t, status(http.StatusGone))
	// Not "*": the endpoint.disabled event the 410 brings would be a
	// fourth delivery, queued at a moment the test cannot know.
	te := newTestEngine(t, Config{Subscriptions: []Subscription{sub("a", rcv.URL, "x")}})
	for i := range 3 {
		te.Publish(msg("x", fmt.Sprintf(`{"n":%d}`, i)))
	}
	eventually(t, "3 queued", func() bool { return te.QueueDepth() == 3 })
	if err := te.Configure(Config{AllowPrivateTargets: true}); err != nil { // "a" removed
		t.Fatal(err)
	}
	depths, err := te.store.QueueDepths()
	if err != nil || len(depths) != 1 || depths[StaticID("a")] != 3 {
		t.Fatalf("depths %v, %v", depths, err)
	}
}

// Large payloads are discarded too: a batch never holds more than a
// transaction can. (Values of 1 MB and more go to badger's value log and
// weigh little in a transaction; 900 KB ones count in full.)
func TestDiscardLargePayloads(t *testing.T) {
	te, id, n := largeBacklog(t)
	if got, err := te.Discard(id); got != n || err != nil {
		t.Fatalf("discarded %d, %v; want %d", got, err, n)
	}
	failed, _ := te.store.FailedDeliveries(id, 100)
	if len(failed) != n {
		t.Fatalf("%d failed deliveries, want %d", len(failed), n)
	}
}

// largeBacklog queues n deliveries for a subscription a 410 disabled: 81
// of about 3 KB and two of 900 KB.
func largeBacklog(t *testing.T) (te *testEngine, id string, n int) {
	rcv := newReceiver(t, status(http.StatusGone))
	te = newTestEngine(t, Config{Subscriptions: []Subscription{sub("gone", rcv.URL, "x", "big")}})
	id = StaticID("gone")
	te.Publish(msg("x", `{}`))
	eventually(t, "the 410 disabling it", func() bool {
		h, _ := te.Health(id)
		return h.Disabled
	})
	for i := range 80 {
		te.Publish(msg("x", fmt.Sprintf(`{"n":%d,"pad":"%s"}`, i, strings.Repeat("p", 3100))))
	}
	big := `{"blob":"` + strings.Repeat("x", 900<<10) + `"}`
	for range 2 {
		if _, err := te.Publish(msg("big", big)); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, "83 queued", func() bool { return te.QueueDepth() == 83 })
	return te, id, 83
}

// A discard takes the backlog as it was when it was asked for. If the
// subscription is registered again meanwhile (a reload), its lane waits
// for the discard to end, and what was published to it since goes out.
func TestDiscardLeavesWhatCameAfterIt(t *testing.T) {
	var up atomic.Bool
	rcv := newReceiver(t, failUntil(&up, http.StatusServiceUnavailable))
	te := newTestEngine(t, Config{Retry: []time.Duration{time.Hour}})
	const n = 200 // 3 KB each: several discard batches
	s := refusedBacklog(t, te, rcv, n, 3000)
	if err := te.DeleteSubscription(s.ID); err != nil {
		t.Fatal(err)
	}

	midway, resume := make(chan struct{}), make(chan struct{})
	var once sync.Once
	te.store.discarded = func() { once.Do(func() { close(midway); <-resume }) }
	type result struct {
		n   int
		err error
	}
	done := make(chan result, 1)
	go func() {
		for {
			got, err := te.Discard(s.ID)
			if !errors.Is(err, ErrAttemptsInFlight) {
				done <- result{got, err}
				return
			}
			time.Sleep(5 * time.Millisecond)
		}
	}()
	<-midway
	// Registered again, its retries due and the endpoint up: only the
	// discard holds the lane back. A new message sorts after the backlog.
	up.Store(true)
	te.clock.Advance(2 * time.Hour)
	if err := te.PutSubscription(s); err != nil {
		t.Fatal(err)
	}
	late := msg("x", `{"late":true}`)
	late.Tenant = "t"
	res, err := te.Publish(late)
	if err != nil {
		t.Fatal(err)
	}
	te.Kick()
	time.Sleep(50 * time.Millisecond)
	if got := len(rcv.got()); got != n {
		t.Fatalf("%d attempts while the discard was midway", got-n)
	}
	close(resume)

	r := <-done
	if r.err != nil || r.n != n {
		t.Fatalf("discarded %d, %v; want the %d queued before the discard", r.n, r.err, n)
	}
	did := deliveryID(res.ID, s.ID)
	eventually(t, "the late message delivered", func() bool { return te.delivery(t, did).State == StateDelivered })
	if hits := rcv.got(); len(hits) != n+1 || hits[n].Body != `{"late":true}` {
		t.Fatalf("%d requests, the last %.40q; want the backlog's first attempts and the late message", len(hits), hits[len(hits)-1].Body)
	}
	if d := te.QueueDepth(); d != 0 {
		t.Fatalf("queue depth %d", d)
	}
}

// Redeliveries racing each other (an operator's double click) requeue each
// failed delivery once and count it once between them.
func TestConcurrentRedeliveriesCountEachDeliveryOnce(t *testing.T) {
	rcv := newReceiver(t, status(http.StatusServiceUnavailable))
	te := newTestEngine(t, Config{Retry: []time.Duration{time.Hour}})
	const n = 300
	s := failedBacklog(t, te, rcv, n, 0)

	// The subscription stays removed: nothing attempts the requeued ones.
	const clicks = 4
	counts := make(chan int, clicks)
	var wg sync.WaitGroup
	for range clicks {
		wg.Go(func() {
			got, err := te.Redeliver(s.ID)
			if err != nil {
				t.Error(err)
			}
			counts <- got
		})
	}
	wg.Wait()
	close(counts)
	total := 0
	for c := range counts {
		total += c
	}
	stored, _ := te.store.QueueDepth(s.ID)
	if total != n || stored != n || te.QueueDepth() != n {
		t.Fatalf("redelivered %d in all, %d queued, %d counted; want %d each", total, stored, te.QueueDepth(), n)
	}
}

// failedBacklog makes a refusedBacklog failed: the subscription is
// removed and its backlog discarded.
func failedBacklog(t *testing.T, te *testEngine, rcv *receiver, n, pad int) Subscription {
	t.Helper()
	s := refusedBacklog(t, te, rcv, n, pad)
	if err := te.DeleteSubscription(s.ID); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the backlog discarded", func() bool {
		got, err := te.Discard(s.ID)
		return got == n && err == nil
	})
	return s
}

// refusedBacklog registers a subscription of tenant "t" with rcv, publishes
// n messages padded with pad bytes to it and waits for their first
// attempts: with rcv refusing them and te retrying after an hour, they
// stay queued.
func refusedBacklog(t *testing.T, te *testEngine, rcv *receiver, n, pad int) Subscription {
	t.Helper()
	s := Subscription{ID: "sub_1", Tenant: "t", URL: rcv.URL, Events: []string{"*"}}
	if err := te.PutSubscription(s); err != nil {
		t.Fatal(err)
	}
	for i := range n {
		m := msg("x", fmt.Sprintf(`{"n":%d,"pad":"%s"}`, i, strings.Repeat("p", pad)))
		m.Tenant = "t"
		if _, err := te.Publish(m); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, "every first attempt", func() bool { return len(rcv.got()) == n })
	return s
}
