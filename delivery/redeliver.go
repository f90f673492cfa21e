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
// again after this or another redelivery requeued them, wait for the next
// redelivery.
type requeue struct {
	s      *Store
	snap   *badger.Txn
	subID  string
	prefix []byte
	now    time.Time
	listed []listedFailure // not yet requeued
	after  []byte          // where the listing goes on; nil once it has ended
}

// listedFailure is a failed delivery as the snapshot has it: version is
// that of its failed key, which a later failure writes again.
type listedFailure struct {
	did     string
	version uint64
}

func (s *Store) failedRequeue(subID string, now time.Time) *requeue {
	prefix := []byte(prefixFailed + subID + "\x00")
	return &requeue{s: s, snap: s.db.NewTransaction(false), subID: subID, prefix: prefix, now: now, after: prefix}
}

func (r *requeue) close() { r.snap.Discard() }

// next requeues one batch and returns how many deliveries it put back
// (those expired meanwhile are only taken off the failed list, those
// requeued meanwhile left as they are) and whether any are left to
// requeue.
func (r *requeue) next() (requeued int, more bool, err error) {
	if len(r.listed) == 0 {
		r.list()
	}
	if len(r.listed) == 0 {
		return 0, false, nil
	}
	var taken int
	err = store.Update(r.s.db, func(txn *badger.Txn) error {
		requeued, taken = 0, 0
		var size int64
		for _, f := range r.listed {
			d, e, current, err := r.failedEntries(txn, f)
			if err != nil {
				return err
			}
			if !current {
				taken++ // requeued by another redelivery since, maybe failed again
				continue
			}
			// One large delivery fits a transaction alone, not with others.
			if size += e.size(); size > discardBatchBytes && taken > 0 {
				break
			}
			taken++
			if err := txn.Delete(failedKey(r.subID, f.did)); err != nil {
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
	r.listed = r.listed[taken:]
	return requeued, len(r.listed) > 0 || r.after != nil, nil
}

// failedEntries returns a listed failure made pending again, due now,
// and the entries that queue it; none when its record has expired or it
// is no longer failed. current is false when the delivery has been
// requeued since it was listed (it may have failed again: that failure
// is not this redelivery's to take).
func (r *requeue) failedEntries(txn *badger.Txn, f listedFailure) (d Delivery, e entries, current bool, err error) {
	item, err := txn.Get([]byte(prefixD + f.did))
	if errors.Is(err, badger.ErrKeyNotFound) {
		return d, entries{}, true, nil
	} else if err != nil {
		return d, entries{}, false, err
	}
	// A failure writes the record and its failed key in one transaction,
	// so a record no newer than the listed key is that failure's, and the
	// common case needs no second read. A newer record is a later life of
	// the delivery unless the key is still the one listed; the key says.
	if item.Version() > f.version {
		if current, err = r.stillListed(txn, f); !current || err != nil {
			return d, entries{}, current, err
		}
	}
	if err := item.Value(func(b []byte) error { return decodeDelivery(b, &d) }); err != nil {
		return d, entries{}, false, err
	}
	if d.State != StateFailed {
		return d, entries{}, true, nil
	}
	d.State, d.Attempts, d.NextAttempt, d.UpdatedAt = StatePending, 0, r.now, r.now
	return d, pendingEntries(&d), true, nil
}

// stillListed reports whether a listed failure's key is still the one
// listed: neither deleted by another redelivery nor written again by a
// later failure.
func (r *requeue) stillListed(txn *badger.Txn, f listedFailure) (bool, error) {
	item, err := txn.Get(failedKey(r.subID, f.did))
	if errors.Is(err, badger.ErrKeyNotFound) {
		return false, nil
	}
	return err == nil && item.Version() == f.version, err
}

// list reads the next failed keys from the snapshot.
func (r *requeue) list() {
	if r.after == nil {
		return
	}
	it := r.snap.NewIterator(badger.IteratorOptions{Prefix: r.prefix})
	defer it.Close()
	r.listed = r.listed[:0]
	for it.Seek(r.after); it.ValidForPrefix(r.prefix) && len(r.listed) < failedListBatch; it.Next() {
		item := it.Item()
		r.listed = append(r.listed, listedFailure{did: string(item.Key()[len(r.prefix):]), version: item.Version()})
	}
	r.after = nil
	if it.ValidForPrefix(r.prefix) {
		r.after = it.Item().KeyCopy(nil)
	}
}
