package delivery

import (
	"errors"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4"
)

// countKeys counts the live keys under prefix.
func countKeys(t *testing.T, te *testEngine, prefix string) int {
	t.Helper()
	n := 0
	err := te.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte(prefix)})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			n++
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func sweep(t *testing.T, te *testEngine) int {
	t.Helper()
	n, err := te.store.sweepPayloads()
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// A large event to several subscriptions is stored once; each delivery
// carries it to its receiver; the payload stays while a failed delivery may
// be redelivered, and goes once nothing needs it.
func TestLargeFanOutStoresItsPayloadOnce(t *testing.T) {
	rcv := newReceiver(t, nil)
	var up atomic.Bool
	down := newReceiver(t, failUntil(&up, 500))
	te := newTestEngine(t, Config{Retry: []time.Duration{time.Second},
		Subscriptions: []Subscription{sub("a", rcv.URL), sub("b", rcv.URL), sub("c", down.URL)}})
	m := msg("x", `{"blob":"`+strings.Repeat("x", 64<<10)+`"}`)
	res, err := te.Publish(m)
	if err != nil || res.Deliveries != 3 {
		t.Fatalf("publish: %+v, %v", res, err)
	}
	if n := countKeys(t, te, prefixPayload); n != 1 {
		t.Fatalf("%d payloads stored for one message", n)
	}
	eventually(t, "a and b delivered", func() bool { return len(rcv.got()) == 2 })
	for _, h := range rcv.got() {
		if h.Body != string(m.Data) {
			t.Fatalf("received %d bytes, not the %d published", len(h.Body), len(m.Data))
		}
	}
	c := deliveryID(res.ID, StaticID("c"))
	eventually(t, "c's first attempt", func() bool { return te.delivery(t, c).Attempts == 1 })
	te.clock.Advance(2 * time.Second)
	te.Kick()
	eventually(t, "c failed", func() bool { return te.delivery(t, c).State == StateFailed })

	// Only c's failed delivery needs it now, for a redelivery.
	if n := countKeys(t, te, prefixPayRef); n != 1 {
		t.Fatalf("%d references with a and b delivered and c failed", n)
	}
	if n := sweep(t, te); n != 0 {
		t.Fatalf("the sweep removed %d payloads a failed delivery needs", n)
	}
	m.ID = res.ID
	assertExpiresWith(t, te, string(payloadRefKey(payloadRefFor(&m), c)), prefixD+c)
	if d := te.delivery(t, c); string(d.Message.Data) != string(m.Data) {
		t.Fatalf("the failed delivery reads %d bytes of payload", len(d.Message.Data))
	}

	up.Store(true)
	if n, err := te.Redeliver(StaticID("c")); n != 1 || err != nil {
		t.Fatalf("redelivered %d, %v", n, err)
	}
	eventually(t, "c delivered", func() bool { return te.delivery(t, c).State == StateDelivered })
	if got := down.got(); got[len(got)-1].Body != string(m.Data) {
		t.Fatalf("redelivered %d bytes, not the %d published", len(got[len(got)-1].Body), len(m.Data))
	}
	if n := sweep(t, te); n != 1 {
		t.Fatalf("the sweep removed %d payloads, want the one nothing needs", n)
	}
	for _, prefix := range []string{prefixPayload, prefixPayRef, prefixPayMark} {
		if n := countKeys(t, te, prefix); n != 0 {
			t.Fatalf("%d keys left under %s", n, prefix)
		}
	}
}

// assertExpiresWith checks that key expires when other does.
func assertExpiresWith(t *testing.T, te *testEngine, key, other string) {
	t.Helper()
	err := te.db.View(func(txn *badger.Txn) error {
		a, err := txn.Get([]byte(key))
		if err != nil {
			return err
		}
		b, err := txn.Get([]byte(other))
		if err != nil {
			return err
		}
		if a.ExpiresAt() == 0 || a.ExpiresAt() != b.ExpiresAt() {
			t.Fatalf("%s expires at %d, %s at %d", key, a.ExpiresAt(), other, b.ExpiresAt())
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// Small events, and events to one subscription, keep their payload in
// their deliveries: nothing to share, and no extra read per attempt.
func TestSmallOrSingleEventsKeepTheirPayload(t *testing.T) {
	rcv := newReceiver(t, nil)
	te := newTestEngine(t, Config{Subscriptions: []Subscription{sub("a", rcv.URL, "x"), sub("b", rcv.URL, "x", "only-b")}})
	te.Publish(msg("x", `{"n":1}`))
	te.Publish(msg("only-b", `{"blob":"`+strings.Repeat("x", 64<<10)+`"}`))
	if n := countKeys(t, te, prefixPayload); n != 0 {
		t.Fatalf("%d payloads stored apart", n)
	}
	eventually(t, "all delivered", func() bool { return len(rcv.got()) == 3 })
}

// A transaction adding references to a payload and the sweep removing it
// cannot both commit: the one that commits second is refused, and its
// retry sees the other's outcome.
func TestSweepAndNewReferencesExcludeEachOther(t *testing.T) {
	te := newTestEngine(t, Config{})
	const ref = "0123abcd"
	if err := te.db.Update(func(txn *badger.Txn) error { return txn.Set(payloadKey(ref), []byte(`{}`)) }); err != nil {
		t.Fatal(err)
	}
	adding := te.db.NewTransaction(true)
	defer adding.Discard()
	if _, err := claimPayload(adding, ref, nil); err != nil {
		t.Fatal(err)
	}
	if err := adding.Set(payloadRefKey(ref, "d1"), nil); err != nil {
		t.Fatal(err)
	}
	if n := sweep(t, te); n != 1 {
		t.Fatalf("swept %d", n)
	}
	if err := adding.Commit(); !errors.Is(err, badger.ErrConflict) {
		t.Fatalf("a reference to a payload swept meanwhile committed: %v", err)
	}
	// Its retry finds the payload gone and, having it, stores it again.
	err := te.db.Update(func(txn *badger.Txn) error {
		stored, err := claimPayload(txn, ref, []byte(`{}`))
		if !stored || err != nil {
			t.Fatalf("claiming a swept payload: stored %v, %v", stored, err)
		}
		return txn.Set(payloadRefKey(ref, "d1"), nil)
	})
	if err != nil {
		t.Fatal(err)
	}
	if n := sweep(t, te); n != 0 {
		t.Fatalf("swept %d payloads a delivery needs", n)
	}
}

// A queued delivery whose payload is gone (a damaged store) is not sent
// without it: it fails, saying why, and the lane goes on with the rest.
func TestLostSharedPayloadFailsTheDelivery(t *testing.T) {
	var up atomic.Bool
	rcv := newReceiver(t, failUntil(&up, 500))
	te := newTestEngine(t, Config{Retry: []time.Duration{time.Hour},
		Subscriptions: []Subscription{sub("a", rcv.URL), sub("b", rcv.URL)}})
	m := msg("x", `{"blob":"`+strings.Repeat("x", 4<<10)+`"}`)
	res, _ := te.Publish(m)
	a, b := deliveryID(res.ID, StaticID("a")), deliveryID(res.ID, StaticID("b"))
	eventually(t, "first attempts", func() bool { return len(rcv.got()) == 2 })
	m.ID = res.ID
	te.store.payloads.m.Clear() // as after a restart
	if err := te.db.Update(func(txn *badger.Txn) error { return txn.Delete(payloadKey(payloadRefFor(&m))) }); err != nil {
		t.Fatal(err)
	}
	after, _ := te.Publish(msg("x", `{"small":true}`))

	up.Store(true)
	te.clock.Advance(2 * time.Hour)
	te.Kick()
	eventually(t, "the later message delivered", func() bool {
		return te.delivery(t, deliveryID(after.ID, StaticID("a"))).State == StateDelivered &&
			te.delivery(t, deliveryID(after.ID, StaticID("b"))).State == StateDelivered
	})
	for _, did := range []string{a, b} {
		if d := te.delivery(t, did); d.State != StateFailed || d.LastError != ReasonPayloadLost || d.Attempts != 1 {
			t.Fatalf("lost delivery: %s %q after %d attempts", d.State, d.LastError, d.Attempts)
		}
	}
	if hits := rcv.got(); len(hits) != 4 {
		t.Fatalf("%d requests, want the 2 first attempts and the later message's 2", len(hits))
	}
	if n, _ := te.store.QueueDepth(StaticID("a")); n != 0 || te.QueueDepth() != 0 {
		t.Fatalf("%d queued for a, %d counted", n, te.QueueDepth())
	}
	failed, _ := te.store.FailedDeliveries(StaticID("a"), 10)
	if len(failed) != 1 || failed[0].ID != a {
		t.Fatalf("failed deliveries of a: %v", failed)
	}
	// Nothing to send: a redelivery forgets it.
	if n, err := te.Redeliver(StaticID("a")); n != 0 || err != nil {
		t.Fatalf("redelivered %d, %v", n, err)
	}
}

// Deliveries of one fan-out loaded at once share one copy of the payload;
// once none holds it, it is read from the store again.
func TestLoadedDeliveriesShareTheirPayload(t *testing.T) {
	te := newTestEngine(t, Config{})
	const ref = "0123abcd"
	data := []byte(`{"blob":"` + strings.Repeat("x", 4<<10) + `"}`)
	if err := te.db.Update(func(txn *badger.Txn) error { return txn.Set(payloadKey(ref), data) }); err != nil {
		t.Fatal(err)
	}
	load := func() []byte {
		d := Delivery{payloadRef: ref}
		if err := te.db.View(func(txn *badger.Txn) error { return te.store.loadPayload(txn, &d) }); err != nil {
			t.Fatal(err)
		}
		if string(d.Message.Data) != string(data) {
			t.Fatalf("loaded %d bytes, want %d", len(d.Message.Data), len(data))
		}
		return d.Message.Data
	}
	a, b := load(), load()
	if &a[0] != &b[0] {
		t.Fatal("two deliveries of one payload hold a copy each")
	}
	runtime.KeepAlive(a)
	runtime.KeepAlive(b)
	a, b = nil, nil
	runtime.GC()
	te.store.payloads.forgetCollected()
	n := 0
	te.store.payloads.m.Range(func(any, any) bool { n++; return true })
	if n != 0 {
		t.Fatalf("%d payloads cached that no delivery holds", n)
	}
	load()
}
