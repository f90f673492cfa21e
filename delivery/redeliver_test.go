package delivery

import (
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4"
)

// A large redelivery goes a batch at a time: the first deliveries are
// attempted, and counted in the queue depth, while the rest are still
// being requeued.
func TestRedeliveryStartsBeforeItEnds(t *testing.T) {
	var up atomic.Bool
	rcv := newReceiver(t, failUntil(&up, http.StatusServiceUnavailable))
	te := newTestEngine(t, Config{Retry: []time.Duration{time.Hour}})
	const n = 200 // 3 KB each: several batches
	s := failedBacklog(t, te, rcv, n, 3000)
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
	te, id, n := largeBacklog(t)
	if got, err := te.Discard(id); got != n || err != nil {
		t.Fatalf("discarded %d, %v; want %d", got, err, n)
	}
	batches := 0
	te.store.redelivered = func() { batches++ }
	if got, err := te.Redeliver(id); got != n || err != nil {
		t.Fatalf("redelivered %d, %v; want %d", got, err, n)
	}
	if stored, _ := te.store.QueueDepth(id); stored != n || te.QueueDepth() != int64(n) || batches < 3 {
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
	if got != n || err != nil {
		t.Fatalf("redelivered %d, %v; want %d", got, err, n)
	}
	eventually(t, "each attempted twice", func() bool { return len(rcv.got()) == 2*n })
	time.Sleep(50 * time.Millisecond)
	if hits := len(rcv.got()); hits != 2*n {
		t.Fatalf("%d attempts; want %d: each first attempt and one redelivery", hits, 2*n)
	}
}

// A failed record written again after its failed key is still taken: the
// key, not the record's version, decides then.
func TestRedeliveryTakesRecordsWrittenAfterTheirKey(t *testing.T) {
	rcv := newReceiver(t, status(http.StatusServiceUnavailable))
	te := newTestEngine(t, Config{Retry: []time.Duration{}})
	const n = 3
	s := refusedBacklog(t, te, rcv, n, 0)
	var failed []Delivery
	eventually(t, "all failed", func() bool {
		failed, _ = te.store.FailedDeliveries(s.ID, n+1)
		return len(failed) == n
	})
	for _, d := range failed {
		err := te.db.Update(func(txn *badger.Txn) error {
			item, err := txn.Get([]byte(prefixD + d.ID))
			if err != nil {
				return err
			}
			v, err := item.ValueCopy(nil)
			if err != nil {
				return err
			}
			return txn.Set([]byte(prefixD+d.ID), v)
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if got, err := te.Redeliver(s.ID); got != n || err != nil {
		t.Fatalf("redelivered %d, %v; want %d", got, err, n)
	}
}

// Nor when another redelivery requeued it meanwhile and it failed again:
// that failure waits for the next redelivery.
func TestConcurrentRedeliveriesTakeEachFailureOnce(t *testing.T) {
	rcv := newReceiver(t, status(http.StatusServiceUnavailable))
	te := newTestEngine(t, Config{Retry: []time.Duration{}})
	const n = 5
	s := refusedBacklog(t, te, rcv, n, 0)
	allFailed := func() bool {
		failed, _ := te.store.FailedDeliveries(s.ID, n+1)
		return len(failed) == n && te.QueueDepth() == 0
	}
	eventually(t, "all failed", allFailed)
	late := te.store.failedRequeue(s.ID, te.clock.Now()) // asked for first, slower to start
	defer late.close()
	if got, err := te.Redeliver(s.ID); got != n || err != nil {
		t.Fatalf("redelivered %d, %v; want %d", got, err, n)
	}
	eventually(t, "each attempted twice", func() bool { return len(rcv.got()) == 2*n })
	eventually(t, "all failed again", allFailed)
	var got int
	err := te.queue.change(func() (int64, error) {
		var err error
		got, _, err = late.next()
		return int64(got), err
	})
	if got != 0 || err != nil {
		t.Fatalf("the later redelivery requeued %d that failed after it was asked for (%v)", got, err)
	}
	if failed, _ := te.store.FailedDeliveries(s.ID, n+1); len(failed) != n {
		t.Fatalf("%d failed deliveries left for the next redelivery, want %d", len(failed), n)
	}
}
