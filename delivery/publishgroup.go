package delivery

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/dgraph-io/badger/v4"

	"github.com/hookgate/caddy-webhook/internal/store"
)

// pendingPublish is one publish waiting for its group commit (see
// store.Batcher), its entries encoded by the publisher so that the
// committer only writes them.
type pendingPublish struct {
	store.Turn
	msg        Message
	fresh      bool
	retention  time.Duration
	deliveries []entries
	record     []byte // the publishRecord
	digest     []byte // its Digest
	size       int64

	stored int
	err    error
}

// newPendingPublish encodes a publish for a group commit, or returns nil
// if it is too large to share a transaction: a large fan-out is stored by
// the fanOutWriter, over several transactions.
func (s *Store) newPendingPublish(msg Message, subs []*Subscription, fresh bool, now time.Time, retention time.Duration) (*pendingPublish, error) {
	p := &pendingPublish{msg: msg, fresh: fresh, retention: retention}
	var err error
	rec := newPublishRecord(&msg, len(subs), fresh, now)
	p.digest = rec.Digest
	if p.record, err = json.Marshal(rec); err != nil {
		return nil, err
	}
	p.size = int64(len(prefixMsg)+len(msg.Tenant)+len(msg.ID)+1+len(p.record)) + 16
	maxSize := s.maxTxnSize()
	for i, sub := range subs {
		e := pendingEntries(&Delivery{
			ID: deliveryID(msg.ID, sub.ID), SubscriptionID: sub.ID, Message: msg,
			State: StatePending, NextAttempt: now, CreatedAt: now, UpdatedAt: now,
			queueOnly: fresh,
		})
		// The deliveries of a message differ only in their subscription
		// IDs: the first tells a large fan-out without encoding the rest.
		if i == 0 && e.size()*int64(len(subs)) > maxSize {
			return nil, nil
		}
		if p.size += e.size(); p.size > maxSize {
			return nil, nil
		}
		p.deliveries = append(p.deliveries, e)
	}
	return p, nil
}

// maxTxnSize is what one transaction of ours may write: badger refuses
// one of 15% of a memtable; stay at half that.
func (s *Store) maxTxnSize() int64 {
	if s.txnSize > 0 {
		return s.txnSize
	}
	return s.db.Opts().MemTableSize * 15 / 100 / 2
}

// enqueueGrouped stores p, sharing a transaction with concurrent
// publishes, and returns how many deliveries it stored.
func (s *Store) enqueueGrouped(p *pendingPublish) (int, error) {
	s.publishes.Do(p, func(queued []*pendingPublish) int { return fittingPublishes(queued, s.maxTxnSize()) }, s.commitPublishes)
	return p.stored, p.err
}

// fittingPublishes is how many of the queued publishes, from the front,
// one transaction takes.
func fittingPublishes(queued []*pendingPublish, maxSize int64) int {
	var size int64
	for i, p := range queued {
		if size += p.size; size > maxSize && i > 0 {
			return i
		}
	}
	return len(queued)
}

// commitPublishes stores a batch in one transaction. A publish alone, or
// each publish of a batch whose shared transaction failed (and so stored
// nothing), is committed on its own and gets its own outcome: a conflict
// (the same ID published twice at once) is repeated, and finds what the
// other publish stored, without failing the rest of the batch.
func (s *Store) commitPublishes(batch []*pendingPublish) {
	if len(batch) > 1 {
		if stored, err := s.commitTogether(batch); err == nil {
			for i, p := range batch {
				p.stored = stored[i]
			}
			return
		}
	}
	for _, p := range batch {
		p.err = store.RetryConflicts(func() error {
			stored, err := s.commitTogether([]*pendingPublish{p})
			if err == nil {
				p.stored = stored[0]
			}
			return err
		})
	}
}

func (s *Store) commitTogether(batch []*pendingPublish) (stored []int, err error) {
	txn := s.db.NewTransaction(true)
	defer txn.Discard()
	stored = make([]int, len(batch))
	for i, p := range batch {
		if stored[i], err = p.put(txn); err != nil {
			return nil, err
		}
	}
	if s.writeFault != nil {
		if err := s.writeFault("publish"); err != nil {
			return nil, err
		}
	}
	if err := txn.Commit(); err != nil {
		return nil, fmt.Errorf("storing deliveries: %w", err)
	}
	return stored, nil
}

// put writes p's deliveries and publish record into txn and returns how
// many deliveries it wrote. Deliveries of a repeated publish that exist
// already (stored by an earlier, interrupted one, or by another publish
// of the same ID in this batch) are left alone.
func (p *pendingPublish) put(txn *badger.Txn) (int, error) {
	if !p.fresh {
		if err := idTaken(txn, &p.msg, p.digest); err != nil {
			return 0, err
		}
	}
	n := 0
	for _, e := range p.deliveries {
		if !p.fresh {
			_, err := txn.Get(e.recordKey)
			if err == nil {
				continue
			}
			if !errors.Is(err, badger.ErrKeyNotFound) {
				return 0, err
			}
		}
		if err := e.put(txn); err != nil {
			return 0, err
		}
		n++
	}
	rec := badger.NewEntry(msgKey(p.msg.Tenant, p.msg.ID), p.record)
	if p.retention > 0 {
		rec = rec.WithTTL(p.retention)
	}
	return n, txn.SetEntry(rec)
}
