package delivery

import (
	"errors"
	"time"

	"github.com/dgraph-io/badger/v4"
	"go.uber.org/zap"

	"github.com/hookgate/caddy-webhook/internal/store"
)

// Discard refuses a subscription that is enabled and registered, whose
// lane would race it, and while attempts of the subscription are in flight
// (their outcomes would put deliveries back).
var (
	ErrSubscriptionActive = errors.New("the subscription is registered and enabled: its deliveries can be discarded once it is disabled or removed")
	ErrAttemptsInFlight   = errors.New("attempts of this subscription are in flight; try again when they have ended")
)

// ReasonDiscarded is the last error of a discarded delivery.
const ReasonDiscarded = "discarded by an operator"

// Discard fails every delivery pending, when it is called, for a
// subscription that was removed or is disabled, so that a backlog nobody
// is going to take is not kept (and counted in the queue depth) forever.
// The deliveries are kept as failed, with their payloads, for the
// retention period: Redeliver queues them again while that lasts. It
// returns how many were discarded, also when it stops on an error.
func (e *Engine) Discard(subID string) (int, error) {
	if err := e.store.canAdd(); err != nil {
		return 0, err // it rewrites the whole backlog before anything expires
	}
	if err := e.beginDiscard(subID); err != nil {
		return 0, err
	}
	defer e.release(subID)
	var n int
	err := e.queue.change(func() (int64, error) {
		var err error
		n, err = e.store.discardPending(subID, e.clock.Now(), e.settings.Load().Retention)
		return -int64(n), err
	})
	log := e.log().Info
	if err != nil {
		log = e.log().Error
	}
	log("discarded pending deliveries", zap.String("subscription", subID), zap.Int("count", n), zap.Error(err))
	return n, err
}

// beginDiscard checks that nothing else works on the subscription's queue
// and holds it (the caller releases it): its lane neither loads nor
// attempts anything even if it is enabled or registered again meanwhile.
func (e *Engine) beginDiscard(subID string) error {
	if _, ok := e.subscription(subID); ok {
		h, err := e.Health(subID)
		if err != nil {
			return err
		}
		if !h.Disabled {
			return ErrSubscriptionActive
		}
	}
	if err := e.hold(subID); err != nil {
		return err
	}
	if e.inFlight(subID) > 0 {
		e.release(subID)
		return ErrAttemptsInFlight
	}
	return nil
}

// discardBatchBytes bounds the queue entries (payloads included) failed in
// one transaction, well below badger's limit for one.
const discardBatchBytes = 256 << 10

// discardPending marks every delivery pending in a subscription's queue
// when it is called failed with ReasonDiscarded, a batch of them per
// transaction, and returns how many it marked. The queue is read from one
// snapshot: what is queued meanwhile (the subscription registered again,
// a redelivery) is not discarded.
func (s *Store) discardPending(subID string, now time.Time, retention time.Duration) (int, error) {
	snap := s.db.NewTransaction(false)
	defer snap.Discard()
	n := 0
	after := queuePrefix(subID)
	for {
		keys, batch, next, err := queuedBatch(snap, subID, after, discardBatchBytes)
		if err != nil || next == nil {
			return n, err
		}
		err = store.Update(s.db, func(txn *badger.Txn) error {
			for i := range batch {
				if err := discardOne(txn, keys[i], batch[i], now, retention); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return n, err
		}
		n += len(batch)
		after = next
		if s.discarded != nil {
			s.discarded()
		}
	}
}

// queuedBatch reads a subscription's queue entries from the key start on,
// as many as fit in maxBytes but at least one; next is where the following
// batch starts, nil when the queue has been read to its end.
func queuedBatch(txn *badger.Txn, subID string, start []byte, maxBytes int) (keys [][]byte, out []Delivery, next []byte, err error) {
	prefix := queuePrefix(subID)
	it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix})
	defer it.Close()
	size := 0
	for it.Seek(start); it.ValidForPrefix(prefix); it.Next() {
		item := it.Item()
		// One entry may be larger than maxBytes (a 1 MB payload) and
		// still fits a transaction alone, not with others.
		if size += int(item.ValueSize()) + len(item.Key()); size > maxBytes && len(out) > 0 {
			break
		}
		next = append(item.KeyCopy(next[:0]), 0) // the least key after this one
		at, did, ok := parseQueueKey(item.Key(), subID)
		if !ok {
			continue
		}
		var d Delivery
		found, err := queuedDelivery(txn, item, did, &d)
		if err != nil {
			return nil, nil, nil, err
		}
		key := item.KeyCopy(nil)
		if !found { // its record expired: nothing to keep
			d = Delivery{ID: did, SubscriptionID: subID, State: StateDelivered}
		}
		d.NextAttempt = at
		keys, out = append(keys, key), append(out, d)
	}
	return keys, out, next, nil
}

func discardOne(txn *badger.Txn, key []byte, d Delivery, now time.Time, retention time.Duration) error {
	if err := txn.Delete(key); err != nil {
		return err
	}
	if d.State != StatePending {
		return nil
	}
	d.State, d.NextAttempt, d.LastError, d.UpdatedAt = StateFailed, time.Time{}, ReasonDiscarded, now
	return putFailed(txn, &d, retention)
}

// QueueDepths counts the pending deliveries of every subscription that has
// any, registered or not (a key-only scan).
func (s *Store) QueueDepths() (map[string]int, error) {
	var depths map[string]int
	err := s.db.View(func(txn *badger.Txn) error {
		_, depths = tallyQueue(txn)
		return nil
	})
	return depths, err
}
