package delivery

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// A large redelivery goes a batch at a time: the first deliveries are
// attempted, and counted in the queue depth, while the rest are still
// being requeued.
func TestRedeliveryStartsBeforeItEnds(t *testing.T) {
	var up atomic.Bool
	rcv := newReceiver(t, failUntil(&up, http.StatusServiceUnavailable))
	te := newTestEngine(t, Config{Retry: []time.Duration{time.Hour}})
	const n = 200 // 3 KB each: several batches
	s := refusedBacklog(t, te, rcv, n, 3000)
	if err := te.DeleteSubscription(s.ID); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the backlog discarded", func() bool {
		got, err := te.Discard(s.ID)
		return got == n && err == nil
	})
	if err := te.PutSubscription(s); err != nil {
		t.Fatal(err)
	}
	up.Store(true)

	var batches, midwayDepth int
	te.store.redelivered = func() {
		if batches++; batches == 1 {
			midwayDepth = int(te.QueueDepth())
			eventually(t, "an attempt while the redelivery is midway", func() bool { return len(rcv.got()) > n })
		}
	}
	got, err := te.Redeliver(s.ID)
	if got != n || err != nil {
		t.Fatalf("redelivered %d, %v; want %d", got, err, n)
	}
	if batches < 3 || midwayDepth <= 0 || midwayDepth >= n {
		t.Fatalf("%d batches, queue depth %d after the first; want several, the first counted at once", batches, midwayDepth)
	}
	eventually(t, "every redelivery taken", func() bool { return te.QueueDepth() == 0 && len(rcv.got()) == 2*n })
}

// Payloads too large to share a transaction are redelivered each in its
// own, and small ones beside them in batches.
func TestRedeliverLargePayloads(t *testing.T) {
	rcv := newReceiver(t, status(http.StatusGone))
	te := newTestEngine(t, Config{Subscriptions: []Subscription{sub("gone", rcv.URL, "x", "big")}})
	id := StaticID("gone")
	te.Publish(msg("x", `{}`))
	eventually(t, "the 410 disabling it", func() bool {
		h, _ := te.Health(id)
		return h.Disabled
	})
	big := `{"blob":"` + strings.Repeat("x", 900<<10) + `"}`
	for i := range 40 {
		te.Publish(msg("x", fmt.Sprintf(`{"n":%d,"pad":"%s"}`, i, strings.Repeat("p", 3100))))
		if i%20 == 0 {
			if _, err := te.Publish(msg("big", big)); err != nil {
				t.Fatal(err)
			}
		}
	}
	eventually(t, "43 queued", func() bool { return te.QueueDepth() == 43 })
	if got, err := te.Discard(id); got != 43 || err != nil {
		t.Fatalf("discarded %d, %v; want 43", got, err)
	}
	batches := 0
	te.store.redelivered = func() { batches++ }
	if got, err := te.Redeliver(id); got != 43 || err != nil {
		t.Fatalf("redelivered %d, %v; want 43", got, err)
	}
	if stored, _ := te.store.QueueDepth(id); stored != 43 || te.QueueDepth() != 43 || batches < 3 {
		t.Fatalf("%d queued, %d counted, in %d batches", stored, te.QueueDepth(), batches)
	}
	if failed, _ := te.store.FailedDeliveries(id, 100); len(failed) != 0 {
		t.Fatalf("%d deliveries still listed as failed", len(failed))
	}
}

// A redelivery takes the failed deliveries as they were when it was asked
// for: one that fails again while it goes on is not requeued a second time.
func TestRedeliveryTakesEachFailedDeliveryOnce(t *testing.T) {
	rcv := newReceiver(t, status(http.StatusServiceUnavailable))
	// No retries: each redelivered delivery fails again at its attempt.
	te := newTestEngine(t, Config{Retry: []time.Duration{}})
	const n = 200
	s := refusedBacklog(t, te, rcv, n, 3000)
	eventually(t, "all failed", func() bool {
		failed, _ := te.store.FailedDeliveries(s.ID, n+1)
		return len(failed) == n
	})
	te.store.redelivered = func() {
		// Let the requeued ones fail again before the next batch.
		eventually(t, "the batch attempted", func() bool { return te.QueueDepth() == 0 })
	}
	got, err := te.Redeliver(s.ID)
	if got != n || !errors.Is(err, nil) {
		t.Fatalf("redelivered %d, %v; want %d", got, err, n)
	}
	eventually(t, "each attempted twice", func() bool { return len(rcv.got()) == 2*n })
	time.Sleep(50 * time.Millisecond)
	if hits := len(rcv.got()); hits != 2*n {
		t.Fatalf("%d attempts; want %d: each first attempt and one redelivery", hits, 2*n)
	}
}
