package delivery

import (
	"context"
	"errors"
	"fmt"
	"net/http"
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
	close(answer) // settled with a retry in an hour, then both are moved
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	eventually(t, "both second attempts", func() bool { return len(rcv.got()) == 4 })
	if d, _ := te.store.QueueDepth(s.ID); d != 2 {
		t.Fatalf("%d queue entries after the second attempts, want 2 (one per delivery)", d)
	}
}
