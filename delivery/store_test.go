package delivery

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4"

	"github.com/hookgate/caddy-webhook/internal/store"
	"github.com/hookgate/caddy-webhook/internal/testclock"
)

// Retries and redeliveries send the same payload as the first attempt:
// queue entries carry it, and a failed delivery keeps it.
func TestRetriesAndRedeliveriesCarryThePayload(t *testing.T) {
	healthy := make(chan struct{})
	rcv := newReceiver(t, func(_ int, w http.ResponseWriter) {
		select {
		case <-healthy:
			w.WriteHeader(204)
		default:
			w.WriteHeader(500)
		}
	})
	te := newTestEngine(t, Config{Retry: []time.Duration{time.Minute}, Subscriptions: []Subscription{sub("s", rcv.URL)}})
	payload := `{"order":"PHS84FJAG5U","note":"` + strings.Repeat("z", 300) + `"}`
	res, err := te.Publish(msg("x", payload))
	if err != nil {
		t.Fatal(err)
	}
	did := deliveryID(res.ID, StaticID("s"))
	eventually(t, "attempt 1", func() bool { return te.delivery(t, did).Attempts == 1 })
	te.clock.Advance(2 * time.Minute)
	te.Kick()
	eventually(t, "the delivery to fail", func() bool { return te.delivery(t, did).State == StateFailed })
	close(healthy)
	if n, err := te.Redeliver(StaticID("s")); n != 1 || err != nil {
		t.Fatalf("redeliver: %d %v", n, err)
	}
	eventually(t, "the redelivery", func() bool { return te.delivery(t, did).State == StateDelivered })
	hits := rcv.got()
	if len(hits) != 3 {
		t.Fatalf("%d attempts, want 3", len(hits))
	}
	for i, h := range hits {
		if h.Body != payload {
			t.Fatalf("attempt %d sent %d bytes, want the payload (%d)", i+1, len(h.Body), len(payload))
		}
	}
}

// Queue entries written by earlier versions (an empty entry and a JSON
// record with the payload) are delivered after an upgrade.
func TestQueueOfEarlierVersionsDelivered(t *testing.T) {
	rcv := newReceiver(t, nil)
	dir := t.TempDir()
	cfg := Config{Subscriptions: []Subscription{sub("s", rcv.URL)}}
	te := openTestEngine(t, dir, cfg, testclock.New(t0))
	for i := 0; i < 3; i++ {
		d := Delivery{
			ID: deliveryID(fmt.Sprint("old-", i), StaticID("s")), SubscriptionID: StaticID("s"), State: StatePending,
			Message:     Message{ID: fmt.Sprint("old-", i), Event: "x", Data: json.RawMessage(fmt.Sprintf(`{"i":%d}`, i)), CreatedAt: t0},
			NextAttempt: t0, CreatedAt: t0, UpdatedAt: t0,
		}
		data := d.Message.Data
		d.Message.Data = nil
		head, _ := json.Marshal(d)
		err := te.db.Update(func(txn *badger.Txn) error {
			if err := txn.Set(queueKey(d.SubscriptionID, t0, d.ID), nil); err != nil {
				return err
			}
			return txn.Set([]byte(prefixD+d.ID), append(append(head, 0), data...))
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	te.Kick()
	eventually(t, "3 deliveries", func() bool { return len(rcv.got()) == 3 })
	for _, h := range rcv.got() {
		if !strings.HasPrefix(h.Body, `{"i":`) || !strings.HasPrefix(h.Header.Get("Webhook-Id"), "old-") {
			t.Fatalf("delivered %s with id %q", h.Body, h.Header.Get("Webhook-Id"))
		}
	}
}

// An entry of that old kind whose record is gone (a damaged store) names
// nothing to send: the lane deletes it, and the queue count, which the
// start seeded with it, drops with it.
func TestOrphanedQueueEntryLeavesTheCount(t *testing.T) {
	rcv := newReceiver(t, nil)
	dir := t.TempDir()
	db, err := store.Open(dir, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(txn *badger.Txn) error {
		return txn.Set(queueKey(StaticID("s"), t0, deliveryID("gone", StaticID("s"))), nil)
	})
	if err != nil {
		t.Fatal(err)
	}
	db.Close()
	te := openTestEngine(t, dir, Config{Subscriptions: []Subscription{sub("s", rcv.URL)}}, testclock.New(t0))
	te.Publish(msg("x", `{}`))
	eventually(t, "the message delivered", func() bool { return len(rcv.got()) == 1 })
	eventually(t, "the orphan gone", func() bool { return storedQueue(t, te.store) == 0 })
	if n := te.QueueDepth(); n != 0 {
		t.Fatalf("%d counted with nothing queued", n)
	}
}

// When badger refuses a delivery in the middle of its entries, the ones
// before it are committed without it and it starts the next transaction:
// no commit ever holds a delivery's queue entry without its record.
func TestFanOutWriterNeverSplitsADelivery(t *testing.T) {
	te := newTestEngine(t, Config{})
	newDelivery := func(i int) *Delivery {
		return &Delivery{
			ID: deliveryID(fmt.Sprint("m", i), "sub"), SubscriptionID: "sub", State: StatePending,
			Message: Message{ID: fmt.Sprint("m", i), Event: "x", Data: []byte(`{"n":1}`)}, NextAttempt: t0,
		}
	}
	w := newFanOutWriter(te.db.DB, 1<<40, "", nil) // never split ahead: the split below is badger's refusal
	if err := w.add(newDelivery(1)); err != nil {
		t.Fatal(err)
	}
	// Fill the transaction so that the next delivery's queue entry fits
	// and its record does not: badger counts key + value + 12 per entry,
	// plus its commit marker's, and refuses at 15% of a memtable.
	entrySize := func(k, v []byte) int { return len(k) + len(v) + 12 }
	first, second := pendingEntries(newDelivery(1)), pendingEntries(newDelivery(2))
	limit := int(te.db.Opts().MemTableSize * 15 / 100)
	room := limit - (len("!badger!txn") + 10) - entrySize(first.queueKey, first.queueValue) -
		entrySize(first.recordKey, first.recordValue) - entrySize(second.queueKey, second.queueValue) - 1
	for i := 0; room > 0; i++ {
		key := []byte(fmt.Sprint("filler/", i))
		n := min(room-len(key)-12, 500_000)
		if err := w.txn.Set(key, make([]byte, n)); err != nil {
			t.Fatal(err)
		}
		room -= entrySize(key, make([]byte, n))
	}
	if err := w.add(newDelivery(2)); err != nil {
		t.Fatal(err)
	}
	visible := func(k []byte) bool {
		err := te.db.View(func(txn *badger.Txn) error { _, err := txn.Get(k); return err })
		return err == nil
	}
	if !visible(first.queueKey) || !visible(first.recordKey) {
		t.Fatal("the delivery before the refused one was not committed whole")
	}
	if visible(second.queueKey) || visible(second.recordKey) {
		t.Fatal("part of the refused delivery was committed before the rest")
	}
	if err := w.commit(); err != nil {
		t.Fatal(err)
	}
	if !visible(second.queueKey) || !visible(second.recordKey) {
		t.Fatal("the refused delivery was not committed in the next transaction")
	}
}

// Outcomes too large to share a transaction are settled in several, each
// whole: a settle cut short between two of them (here by a refused write)
// leaves every delivery with exactly one queue entry, its old one or its
// new one, never neither.
func TestSettleSplitsOnlyBetweenOutcomes(t *testing.T) {
	db, err := store.Open(t.TempDir(), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	s := NewStore(db.DB)
	big := json.RawMessage(`{"blob":"` + strings.Repeat("x", 900<<10) + `"}`) // counts in full in a transaction
	subs := []*Subscription{{ID: "s", Events: []string{"*"}}}
	for i := range 2 {
		m := Message{ID: fmt.Sprint("m", i), Event: "x", Data: big, CreatedAt: t0}
		if _, err := s.enqueue(m, subs, true, t0, time.Hour); err != nil {
			t.Fatal(err)
		}
	}
	set, err := s.due("s", time.Time{}, t0, nil, 10)
	queued := set.out
	if err != nil || len(queued) != 2 {
		t.Fatalf("%d queued, %v", len(queued), err)
	}
	var batch []settled
	for _, d := range queued { // both failed once and retry in a minute
		at := d.NextAttempt
		d.Attempts, d.NextAttempt, d.LastStatus = 1, t0.Add(time.Minute), 500
		batch = append(batch, settled{d: d, queuedAt: at, att: Attempt{DeliveryID: d.ID, SubscriptionID: "s", N: 1, At: t0, Status: 500}})
	}
	txns := 0
	s.writeFault = func(op string) error {
		if txns++; op == "settle" && txns == 2 {
			return errors.New("no space left on device")
		}
		return nil
	}
	if stored, err := s.settle(batch, time.Hour); err == nil || stored != 1 {
		t.Fatalf("settle with its second transaction refused: %d stored, %v", stored, err)
	}
	for _, d := range queued {
		entries := 0
		err := db.View(func(txn *badger.Txn) error {
			it := txn.NewIterator(badger.IteratorOptions{Prefix: queuePrefix("s")})
			defer it.Close()
			for it.Rewind(); it.Valid(); it.Next() {
				if strings.HasSuffix(string(it.Item().Key()), "\x00"+d.ID) {
					entries++
				}
			}
			return nil
		})
		if err != nil || entries != 1 {
			t.Fatalf("delivery %s has %d queue entries (%v), want 1", d.ID, entries, err)
		}
	}
}
