package delivery

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// RetryNow sends a backlog waiting on its retry schedule at once, each
// delivery once, its attempts counted on.
func TestRetryNow(t *testing.T) {
	rcv := newReceiver(t, nil)
	up := make(chan struct{})
	rcv.respond = func(_ int, w http.ResponseWriter) {
		select {
		case <-up:
			w.WriteHeader(http.StatusNoContent)
		default:
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	}
	te := newTestEngine(t, Config{Retry: []time.Duration{time.Hour}})
	const n = 200 // 3 KB each: several batches
	s := refusedBacklog(t, te, rcv, n, 3000)
	close(up)

	if err := te.hold(s.ID); err != nil {
		t.Fatal(err)
	}
	if got, err := te.RetryNow(context.Background(), s.ID); got != 0 || !errors.Is(err, ErrQueueHeld) {
		t.Fatalf("retry during another operation: %d, %v", got, err)
	}
	te.release(s.ID)

	var got int
	var err error
	eventually(t, "the first attempts to settle", func() bool {
		got, err = te.RetryNow(context.Background(), s.ID)
		return !errors.Is(err, ErrAttemptsInFlight)
	})
	if err != nil || got != n {
		t.Fatalf("made %d due now, %v; want %d", got, err, n)
	}
	eventually(t, "the backlog to go out", func() bool { return te.QueueDepth() == 0 })
	if hits := len(rcv.got()); hits != 2*n {
		t.Fatalf("receiver got %d requests, want %d (each delivery once more)", hits, 2*n)
	}
	failed, _ := te.store.FailedDeliveries(s.ID, 1)
	if d, _ := te.store.QueueDepth(s.ID); d != 0 || len(failed) != 0 {
		t.Fatalf("queue %d, failed %d after the retry", d, len(failed))
	}
	atts, _ := te.RecentAttempts(s.ID, 1)
	if len(atts) != 1 || atts[0].N != 2 || !atts[0].Success {
		t.Fatalf("last attempt %+v: want the second, successful", atts)
	}
	if again, err := te.RetryNow(context.Background(), s.ID); again != 0 || err != nil {
		t.Fatalf("second retry: %d, %v", again, err)
	}
}

// RetryNow waits for the attempts in flight to be settled before it
// moves anything, and gives up without moving anything when its context
// ends first.
func TestRetryNowWaitsForAttemptsInFlight(t *testing.T) {
	hanging, answer := make(chan struct{}), make(chan struct{})
	rcv := newReceiver(t, func(n int, w http.ResponseWriter) {
		if n == 2 {
			close(hanging)
			<-answer
		}
		w.WriteHeader(http.StatusServiceUnavailable)
	})
	var answered sync.Once
	letAnswer := func() { answered.Do(func() { close(answer) }) }
	t.Cleanup(letAnswer) // before the receiver closes, even after a failure
	te := newTestEngine(t, Config{Retry: []time.Duration{time.Hour, time.Hour}})
	s := refusedBacklog(t, te, rcv, 1, 0)
	// Another message, whose first attempt hangs.
	m := msg("x", `{"n":2}`)
	m.Tenant = "t"
	if _, err := te.Publish(m); err != nil {
		t.Fatal(err)
	}
	<-hanging
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if got, err := te.RetryNow(ctx, s.ID); got != 0 || !errors.Is(err, ErrAttemptsInFlight) {
		t.Fatalf("retry with an attempt in flight: %d, %v", got, err)
	}

	done := make(chan error, 1)
	go func() {
		got, err := te.RetryNow(context.Background(), s.ID)
		if err == nil && got != 2 {
			err = fmt.Errorf("moved %d deliveries, want 2", got)
		}
		done <- err
	}()
	letAnswer() // settled with a retry in an hour, then both are moved
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	eventually(t, "both second attempts", func() bool { return len(rcv.got()) == 4 })
	if d, _ := te.store.QueueDepth(s.ID); d != 2 {
		t.Fatalf("%d queue entries after the second attempts, want 2 (one per delivery)", d)
	}
}

// Retries asked for again and again, two at a time, while deliveries are
// published, attempted and refused, move each delivery once per refusal:
// every message reaches the receiver exactly three times (refused twice,
// then taken), and the queue and its count end empty together.
func TestRetryNowUnderTraffic(t *testing.T) {
	var mu sync.Mutex
	requests := map[string]int{}
	rcv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		id := r.Header.Get("Webhook-Id")
		requests[id]++
		n := requests[id]
		mu.Unlock()
		if n <= 2 {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(rcv.Close)
	te := newTestEngine(t, Config{Retry: []time.Duration{time.Hour, time.Hour, time.Hour}})
	s := Subscription{ID: "sub_1", Tenant: "t", URL: rcv.URL, Events: []string{"*"}}
	if err := te.PutSubscription(s); err != nil {
		t.Fatal(err)
	}

	const publishers, each = 4, 50
	var moved atomic.Int64
	var retriers sync.WaitGroup
	for range 2 {
		retriers.Go(func() {
			for te.QueueDepth() > 0 || moved.Load() < 2*publishers*each {
				n, err := te.RetryNow(context.Background(), s.ID)
				if err != nil && !errors.Is(err, ErrAttemptsInFlight) && !errors.Is(err, ErrQueueHeld) {
					t.Error(err)
					return
				}
				moved.Add(int64(n))
				time.Sleep(time.Millisecond)
			}
		})
	}
	done := make(chan struct{})
	go func() { retriers.Wait(); close(done) }()
	var wg sync.WaitGroup
	for p := range publishers {
		wg.Go(func() {
			for i := range each {
				m := msg("x", fmt.Sprintf(`{"p":%d,"i":%d}`, p, i))
				m.Tenant = "t"
				if _, err := te.Publish(m); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatalf("queue depth %d after 30 s", te.QueueDepth())
	}
	if n := moved.Load(); n != 2*publishers*each {
		t.Errorf("%d deliveries made due now, want %d (two refusals each)", n, 2*publishers*each)
	}
	if d, _ := te.store.QueueDepth(s.ID); d != 0 {
		t.Fatalf("%d entries left in the queue", d)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(requests) != publishers*each {
		t.Fatalf("%d messages reached the receiver, want %d", len(requests), publishers*each)
	}
	for id, n := range requests {
		if n != 3 {
			t.Fatalf("message %s reached the receiver %d times, want 3", id, n)
		}
	}
}
