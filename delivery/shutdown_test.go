package delivery

import (
	"context"
	"net/http"
	"testing"
)

// Shutdown lets an attempt in flight end and records its outcome, so that
// a graceful stop does not make the receiver get it twice; once
// Shutdown's context ends (Stop's already has) the attempt is cut short
// and stays queued for the next start.
func TestShutdownFinishesAttemptsInFlight(t *testing.T) {
	for _, tc := range []struct {
		name      string
		patient   bool
		wantState State
		wantN     int
	}{
		{"waits", true, StateDelivered, 1},
		{"cuts short", false, StatePending, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			arrived, release := make(chan struct{}, 1), make(chan struct{})
			rcv := newReceiver(t, func(_ int, w http.ResponseWriter) {
				arrived <- struct{}{}
				<-release
				w.WriteHeader(http.StatusNoContent)
			})
			defer close(release)
			te := newTestEngine(t, Config{Subscriptions: []Subscription{sub("shop", rcv.URL)}})
			res, err := te.Publish(msg("order.created", `{"n":1}`))
			if err != nil {
				t.Fatal(err)
			}
			<-arrived
			ctx, cancel := context.WithCancel(context.Background())
			if !tc.patient {
				cancel()
			}
			defer cancel()
			stopped := make(chan struct{})
			go func() {
				te.Shutdown(ctx)
				close(stopped)
			}()
			if tc.patient {
				// No new attempt starts once Shutdown has begun; the one
				// in flight keeps it waiting until the receiver answers.
				eventually(t, "shutdown to begin", func() bool {
					te.stopMu.RLock()
					defer te.stopMu.RUnlock()
					return te.stopping
				})
				select {
				case <-stopped:
					t.Fatal("Shutdown returned with an attempt in flight")
				default:
				}
				release <- struct{}{}
			}
			<-stopped
			if n := te.AttemptsInFlight(); n != 0 {
				t.Fatalf("%d attempts in flight after Shutdown", n)
			}
			d := te.delivery(t, deliveryID(res.ID, StaticID("shop")))
			if d.State != tc.wantState || d.Attempts != tc.wantN {
				t.Fatalf("delivery %s after %d attempts, want %s after %d", d.State, d.Attempts, tc.wantState, tc.wantN)
			}
		})
	}
}
