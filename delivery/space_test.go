package delivery

import (
	"errors"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hookgate/caddy-webhook/internal/store"
)

// While the store refuses to add data (a disk nearly full), nothing new
// is accepted, queued deliveries wait without being attempted, and they
// go out, with nothing else waking them, once space is back. It runs on
// the test clock: a retry stored at wall time would wait longer if the
// machine's clock were set back meanwhile.
func TestLowSpacePausesIntakeAndDeliveries(t *testing.T) {
	var low atomic.Bool
	var asked atomic.Int64 // how often the guard was asked
	var up atomic.Bool
	r := newReceiver(t, failUntil(&up, http.StatusServiceUnavailable))
	cfg := Config{Retry: []time.Duration{time.Minute, time.Minute}, Subscriptions: []Subscription{sub("a", r.URL)}}
	e := newGuardedTestEngine(t, cfg, func() error {
		asked.Add(1)
		if low.Load() {
			return &store.LowSpaceError{Dir: "/data", Free: 1 << 20, Min: 256 << 20}
		}
		return nil
	})
	clock := e.clock

	first, err := e.Publish(msg("order.status", `{"n":1}`))
	if err != nil {
		t.Fatal(err)
	}
	id := deliveryID(first.ID, StaticID("a"))
	eventually(t, "the first attempt failed and settled", func() bool {
		d, ok, _ := e.store.Delivery(id)
		return ok && d.Attempts == 1 && e.inFlight(StaticID("a")) == 0
	})
	low.Store(true)
	up.Store(true)

	_, err = e.Publish(msg("order.status", `{"n":2}`))
	if !errors.Is(err, store.ErrLowSpace) {
		t.Fatalf("publish while low: %v", err)
	}
	refused := map[string]error{
		"register":    e.PutSubscription(Subscription{ID: "t:x", Source: "tiki", URL: r.URL, Events: []string{"e"}}),
		"credentials": e.SetCredentials("tiki", "", Credentials{ID: "id", Secret: "secret"}),
		"writable":    e.Writable(),
	}
	_, refused["redeliver"] = e.Redeliver(StaticID("a"))
	_, refused["discard"] = e.Discard(StaticID("gone"))
	for what, err := range refused {
		if !errors.Is(err, store.ErrLowSpace) {
			t.Errorf("%s while low: %v", what, err)
		}
	}
	if _, ok := e.Subscription("t:x"); ok {
		t.Error("the refused registration is in effect")
	}

	// The retry comes due: the lane looks at its queue, is refused, and
	// looks again after each pause, still refused. The clock moves while
	// the test waits, since when the lane last looked is not known here.
	before := asked.Load()
	clock.Advance(2 * time.Minute)
	e.Kick()
	eventually(t, "the lane looking", func() bool { return asked.Load() > before })
	for range 2 {
		before := asked.Load()
		eventually(t, "the lane looking again", func() bool {
			clock.Advance(10 * time.Millisecond)
			return asked.Load() > before
		})
	}
	if n := len(r.got()); n != 1 {
		t.Fatalf("%d attempts while the store was low, want the 1 before", n)
	}
	if d := e.QueueDepth(); d != 1 {
		t.Fatalf("queue depth %d, want the 1 waiting delivery", d)
	}

	low.Store(false)
	eventually(t, "the retry once space is back", func() bool {
		clock.Advance(10 * time.Millisecond)
		return len(r.got()) == 2
	})
	eventually(t, "the delivery settled", func() bool { return e.QueueDepth() == 0 })
	if _, err := e.Publish(msg("order.status", `{"n":3}`)); err != nil {
		t.Fatalf("publish after space came back: %v", err)
	}
	eventually(t, "the new message", func() bool { return len(r.got()) == 3 })
}
