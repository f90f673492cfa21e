package delivery

import (
	"errors"
	"time"

	"github.com/dgraph-io/badger/v4"

	"github.com/hookgate/caddy-webhook/internal/store"
)

// Redeliver queues a subscription's failed deliveries again, each with a
// fresh retry schedule, and returns how many, also when it stops on an
// error. It requeues a batch per transaction: the first deliveries are
// attempted while later batches are being requeued.
func (e *Engine) Redeliver(subID string) (int, error) {
	if err := e.store.canAdd(); err != nil {
		return 0, err
	}
	r := e.store.failedRequeue(subID, e.clock.Now())
	defer r.close()
	total := 0
	for {
		var n int
		var more bool
		err := e.queue.change(func() (int64, error) {
			var err error
			n, more, err = r.next()
			return int64(n), err
		})
		total += n
		if n > 0 {
			e.wakeFrom(subID, time.Time{})
		}
		if e.store.redelivered != nil && err == nil {
			e.store.redelivered()
		}
		if err != nil || !more {
			return total, err
		}
	}
}

// failedListBatch is how many failed keys a requeue lists at a time; the
// transaction then takes as many of them as fit in discardBatchBytes.
const failedListBatch = 512

// requeue puts a subscription's failed deliveries back in its queue, due
// at one time, a batch per transaction. It takes them as they were when it
// was asked for, listed from one snapshot (as a discard takes the
// backlog): deliveries that fail while it goes on, for the first time or
// again after it requeued them, wait for the next redelivery.
type requeue struct {
	s      *Store
	snap   *badger.Txn
	subID  string
	prefix []byte
	now    time.Time
	dids   []string // listed, not yet requeued
	after  []byte   // where the listing goes on; nil once it has ended
}

func (s *Store) failedRequeue(subID string, now time.Time) *requeue {
	prefix := []byte(prefixFailed + subID + "\x00")
	return &requeue{s: s, snap: s.db.NewTransaction(false), subID: subID, prefix: prefix, now: now, after: prefix}
}

func (r *requeue) close() { r.snap.Discard() }

// next requeues one batch and returns how many deliveries it put back
// (those expired or redelivered meanwhile are only taken off the failed
// list) and whether any are left to requeue.
func (r *requeue) next() (requeued int, more bool, err error) {
	if len(r.dids) == 0 {
		r.list()
	}
	if len(r.dids) == 0 {
		return 0, false, nil
	}
	var taken int
	err = store.Update(r.s.db, func(txn *badger.Txn) error {
		requeued, taken = 0, 0
		var size int64
		for _, did := range r.dids {
			d, e, err := failedEntries(txn, did, r.now)
			if err != nil {
				return err
			}
			// One large delivery fits a transaction alone, not with others.
			if size += e.size(); size > discardBatchBytes && taken > 0 {
				break
			}
			taken++
			if err := txn.Delete(failedKey(r.subID, did)); err != nil {
				return err
			}
			if e.queueKey == nil {
				continue
			}
			if d.payloadRef != "" {
				// Claimed in this transaction, the payload is safe from the sweep.
				if _, err := claimPayload(txn, d.payloadRef, nil); errors.Is(err, errPayloadGone) {
					continue // expired an instant before its record
				} else if err != nil {
					return err
				}
			}
			if err := e.put(txn); err != nil {
				return err
			}
			requeued++
		}
		return nil
	})
	if err != nil {
		return 0, false, err
	}
	r.dids = r.dids[taken:]
	return requeued, len(r.dids) > 0 || r.after != nil, nil
}

// failedEntries returns a failed delivery made pending again, due now,
// and the entries that queue it; none when its record has expired or it
// is no longer failed.
func failedEntries(txn *badger.Txn, did string, now time.Time) (d Delivery, e entries, err error) {
	found, err := getDelivery(txn, did, &d)
	if err != nil || !found || d.State != StateFailed {
		return d, entries{}, err
	}
	d.State, d.Attempts, d.NextAttempt, d.UpdatedAt = StatePending, 0, now, now
	return d, pendingEntries(&d), nil
}

// list reads the next failed keys from the snapshot.
func (r *requeue) list() {
	if r.after == nil {
		return
	}
	it := r.snap.NewIterator(badger.IteratorOptions{Prefix: r.prefix})
	defer it.Close()
	r.dids = r.dids[:0]
	for it.Seek(r.after); it.ValidForPrefix(r.prefix) && len(r.dids) < failedListBatch; it.Next() {
		r.dids = append(r.dids, string(it.Item().Key()[len(r.prefix):]))
	}
	r.after = nil
	if it.ValidForPrefix(r.prefix) {
		r.after = it.Item().KeyCopy(nil)
	}
}
