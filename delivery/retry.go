package delivery

import (
	"context"
	"time"

	"github.com/dgraph-io/badger/v4"
	"go.uber.org/zap"

	"github.com/hookgate/caddy-webhook/internal/store"
)

// RetryNow makes every delivery pending for a subscription due now, each
// keeping its attempts so far: for a receiver that is back while the
// retry schedule has its deliveries hours away. A disabled subscription's
// deliveries stay kept until it is enabled.
//
// The subscription's queue is held meanwhile, as a discard holds it: two
// operations moving the same entry would each queue it anew. No attempt
// starts, and those in flight are let end and be settled first (for at
// most the attempt timeout, or until ctx ends), so that their retries are
// moved too. Their own entries are due already and never moved, unless
// the clock stepped back: the entry settled would then be gone and the
// moved one left queued. It ends a pause after store failures (see
// endPause). It returns how many deliveries it moved, also when it stops
// on an error.
func (e *Engine) RetryNow(ctx context.Context, subID string) (int, error) {
	if err := e.store.canAdd(); err != nil {
		return 0, err
	}
	if err := e.hold(subID); err != nil {
		return 0, err
	}
	defer e.release(subID)
	// Attempts in flight end within the attempt timeout.
	ctx, cancel := context.WithTimeout(ctx, e.settings.Load().Timeout+5*time.Second)
	defer cancel()
	for e.inFlight(subID) > 0 {
		select {
		case <-ctx.Done():
			return 0, ErrAttemptsInFlight
		case <-time.After(10 * time.Millisecond):
		}
	}
	n, err := e.store.reschedule(subID, e.clock.Now())
	log := e.log().Info
	if err != nil {
		log = e.log().Error
	} else {
		e.endPause(subID)
	}
	log("pending deliveries made due now", zap.String("subscription", subID), zap.Int("count", n), zap.Error(err))
	return n, err
}

// endPause lets a lane paused by store failures read its queue when it
// is next woken: an operator asked for its deliveries now, typically once
// the disk is fixed, rather than at the end of a pause of up to a minute.
// Should the store still fail, the next pause is the next longer one.
func (e *Engine) endPause(subID string) {
	e.mu.Lock()
	if l := e.lanes[subID]; l != nil {
		l.pausedUntil = time.Time{}
	}
	e.mu.Unlock()
}

// reschedule moves every queue entry of a subscription due after now to
// now, a batch per transaction, and returns how many it moved. The queue
// is read from one snapshot, so an entry is moved at most once and what
// is queued meanwhile is left as it is.
func (s *Store) reschedule(subID string, now time.Time) (int, error) {
	snap := s.db.NewTransaction(false)
	defer snap.Discard()
	n := 0
	after := queueKey(subID, now.Add(time.Nanosecond), "")
	for {
		keys, batch, next, err := queuedBatch(snap, subID, after, discardBatchBytes)
		if err != nil || next == nil {
			return n, err
		}
		moved := 0
		err = store.Update(s.db, func(txn *badger.Txn) error {
			moved = 0
			for i := range batch {
				if batch[i].State != StatePending { // its record expired
					continue
				}
				if err := txn.Delete(keys[i]); err != nil {
					return err
				}
				d := batch[i]
				d.NextAttempt, d.UpdatedAt = now, now
				if err := pendingEntries(&d).put(txn); err != nil {
					return err
				}
				moved++
			}
			return nil
		})
		if err != nil {
			return n, err
		}
		n += moved
		after = next
	}
}
