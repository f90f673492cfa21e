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
// go out once space is back.
func TestLowSpacePausesIntakeAndDeliveries(t *testing.T) {
	db, err := store.Open(t.TempDir(), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	var low atomic.Bool
	s := NewStore(db.DB)
	s.SetWritable(func() error {
		if low.Load() {
			return &store.LowSpaceError{Dir: "/data", Free: 1 << 20, Min: 256 << 20}
		}
		return nil
	})
	e := NewEngine(s, nil, nil)
	var up atomic.Bool
	r := newReceiver(t, failUntil(&up, http.StatusServiceUnavailable))
	cfg := Config{AllowPrivateTargets: true, Retry: []time.Duration{300 * time.Millisecond, 300 * time.Millisecond},
		Subscriptions: []Subscription{sub("a", r.URL)}}
	if err := e.Configure(cfg); err != nil {
		t.Fatal(err)
	}
	if err := e.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Stop(); db.Close() })

	if _, err := e.Publish(msg("order.status", `{"n":1}`)); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the first attempt", func() bool { return len(r.got()) == 1 })
	// The retry is 300 ms away: the store fills up before it comes due.
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

	time.Sleep(time.Second) // three retry periods: would the retry go out?
	if n := len(r.got()); n != 1 {
		t.Fatalf("%d attempts while the store was low, want the 1 before", n)
	}
	if d := e.QueueDepth(); d != 1 {
		t.Fatalf("queue depth %d, want the 1 waiting delivery", d)
	}

	low.Store(false)
	eventually(t, "the retry once space is back", func() bool { return len(r.got()) == 2 })
	eventually(t, "the delivery settled", func() bool { return e.QueueDepth() == 0 })
	if _, err := e.Publish(msg("order.status", `{"n":3}`)); err != nil {
		t.Fatalf("publish after space came back: %v", err)
	}
	eventually(t, "the new message", func() bool { return len(r.got()) == 3 })
}
