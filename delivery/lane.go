package delivery

import (
	"maps"
	"time"

	"go.uber.org/zap"
)

type waitingLane struct {
	subID string
	l     *lane
}

// lane tracks the runner of one subscription's queue.
type lane struct {
	subID   string
	running bool // running or waiting for its turn
	kicked  bool
	// cursor: every entry due before it has been loaded, except those
	// announced since (rewind, rewindTo). A load starts at the earlier of
	// the two, so an entry committed while a load was running, and hence
	// possibly missing from its snapshot, is still found by the next one.
	cursor   time.Time
	rewind   bool
	rewindTo time.Time
	// inflight holds deliveries being attempted or waiting to be settled;
	// the loader skips them. progress is signalled when one leaves.
	inflight map[string]bool
	progress chan struct{}
	// exhausted: the last load found every due entry; next is when the
	// first entry after them comes due (zero: none).
	exhausted bool
	next      time.Time
	// pausedUntil: the store failed; nothing is loaded before then.
	// storeFailures counts the failures since an outcome was last stored.
	pausedUntil   time.Time
	storeFailures int
}

// Kick makes every subscription look at its queue now, and the scheduler
// at its wake-ups. Useful after a clock jump in tests, whose clock the
// scheduler's timer does not follow, and after configuration changes.
func (e *Engine) Kick() {
	idx := e.index.Load()
	if idx == nil {
		return
	}
	idx.each(func(s *Subscription) { e.wake(s.ID) })
	e.sched.poke()
}

// wake makes sure the subscription's queue is being worked on.
func (e *Engine) wake(subID string) { e.wakeFrom(subID, time.Time{}) }

// wakeFrom is wake for a queue that just got an entry due at `due`
// (zero: unknown, rescan from the start).
func (e *Engine) wakeFrom(subID string, due time.Time) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if !e.started {
		return // Start kicks every queue
	}
	l := e.lanes[subID]
	if l == nil {
		l = &lane{subID: subID, inflight: map[string]bool{}, progress: make(chan struct{}, 1)}
		e.lanes[subID] = l
	}
	l.rewindFrom(due)
	if l.running {
		l.kicked = true
		// A lane waiting for its attempts in flight must look at the new
		// entry now: free slots would otherwise stay idle until one of
		// those attempts ends, which a slow receiver can make seconds.
		l.signal()
		return
	}
	l.running = true
	if e.activeLanes >= e.maxLanes() {
		e.waitingLanes = append(e.waitingLanes, waitingLane{subID, l})
		return
	}
	e.activeLanes++
	e.wg.Add(1)
	go e.runLane(subID, l)
}

// rewindFrom makes the lane's next load start no later than due (zero:
// from the start of the queue); e.mu held. Unlike exhausted, which every
// load sets when it ends, rewind is cleared only when a load begins, so a
// load already running cannot undo it.
func (l *lane) rewindFrom(due time.Time) {
	if !l.rewind || due.Before(l.rewindTo) {
		l.rewindTo = due
	}
	l.rewind = true
}

// signal wakes the lane if it waits for progress.
func (l *lane) signal() {
	select {
	case l.progress <- struct{}{}:
	default:
	}
}

// maxLanes bounds the lanes running at once. Each running lane is loading,
// dispatching or waiting for attempts that hold a worker, so twice the
// workers keeps every worker busy while a lane waits.
func (e *Engine) maxLanes() int { return max(2*e.settings.Load().Workers, 64) }

// laneDone hands a finished lane's turn to the next waiting one; e.mu held.
func (e *Engine) laneDone() {
	if len(e.waitingLanes) == 0 || e.ctx.Err() != nil {
		e.activeLanes--
		return
	}
	next := e.waitingLanes[0]
	e.waitingLanes[0] = waitingLane{}
	e.waitingLanes = e.waitingLanes[1:]
	e.wg.Add(1)
	go e.runLane(next.subID, next.l)
}

// runLane keeps a subscription's due deliveries in flight, up to its
// concurrency, loading more as slots free up, and schedules a wake-up for
// the next one when nothing is due and nothing is in flight.
func (e *Engine) runLane(subID string, l *lane) {
	defer e.wg.Done()
	s := e.settings.Load()
	slots := make(chan struct{}, s.EndpointConcurrency)
	for {
		e.mu.Lock()
		if wait, next := e.nothingToLoad(l); wait {
			busy := len(l.inflight) > 0
			e.mu.Unlock()
			if busy {
				e.waitProgress(l, subID, next)
				continue
			}
			if e.idle(l, next, subID) {
				return
			}
			continue
		}
		from := l.cursor
		if l.rewind {
			if l.rewindTo.Before(from) {
				from = l.rewindTo
			}
			l.rewind = false
		}
		skip := maps.Clone(l.inflight)
		e.mu.Unlock()
		batch, next, err := e.loadDue(subID, from, skip, cap(slots))
		failed := err != nil && e.ctx.Err() == nil
		if failed {
			e.log().Error("reading delivery queue", zap.String("subscription", subID), zap.Error(err))
		}
		e.mu.Lock()
		if failed {
			next = e.pauseAfterStoreError(l)
		}
		// A short batch is everything due; until something is added or
		// retried, or next comes due, the queue need not be read again.
		l.exhausted, l.next = err == nil && len(batch) < cap(slots), next
		e.mu.Unlock()
		if len(batch) == 0 {
			if len(skip) > 0 && e.ctx.Err() == nil {
				e.waitProgress(l, subID, next) // more may become due as these settle
				continue
			}
			if e.idle(l, next, subID) {
				return
			}
			continue
		}
		e.mu.Lock()
		l.cursor = batch[len(batch)-1].NextAttempt
		for i := range batch {
			l.inflight[batch[i].ID] = true
		}
		e.mu.Unlock()
		for i := range batch {
			if !e.dispatch(l, slots, batch[i]) {
				return
			}
		}
	}
}

// nothingToLoad reports whether the lane is to wait rather than read its
// queue, and until when (zero: until woken); e.mu held.
func (e *Engine) nothingToLoad(l *lane) (bool, time.Time) {
	if e.ctx.Err() == nil && e.clock.Now().Before(l.pausedUntil) {
		return true, l.pausedUntil
	}
	return e.knownEmpty(l), l.next
}

// pauseAfterStoreError pauses the lane after the store failed to read its
// queue or to record an outcome, and returns when the pause ends; e.mu
// held. Sending while outcomes cannot be stored would repeat the same
// requests at full speed, so each pause that ends in another failure is
// twice as long as the one before, from storeErrorPause up to
// maxStoreErrorPause, until an outcome is stored again. Failures during a
// pause (attempts that began before it) belong to that pause.
func (e *Engine) pauseAfterStoreError(l *lane) time.Time {
	if e.clock.Now().Before(l.pausedUntil) {
		return l.pausedUntil
	}
	l.storeFailures++
	pause := min(storeErrorPause<<min(l.storeFailures-1, 8), maxStoreErrorPause)
	l.pausedUntil = e.clock.Now().Add(pause)
	e.paused[l] = struct{}{}
	e.log().Warn("deliveries paused after a store failure", zap.String("subscription", l.subID),
		zap.Int("pauses", l.storeFailures), zap.Duration("pause", pause))
	return l.pausedUntil
}

// StorePause is a subscription's pause after store failures, as operators
// see it.
type StorePause struct {
	// Until is when its queue is read again.
	Until time.Time `json:"until"`
	// Pauses counts the pauses since an outcome was last recorded; each
	// is twice as long as the one before, up to a minute.
	Pauses int `json:"pauses"`
}

// StorePause reports whether the subscription's deliveries pause because
// the store failed (see pauseAfterStoreError), and until when.
func (e *Engine) StorePause(subID string) (StorePause, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	l := e.lanes[subID]
	if l == nil || !e.clock.Now().Before(l.pausedUntil) {
		return StorePause{}, false
	}
	return StorePause{Until: l.pausedUntil, Pauses: l.storeFailures}, true
}

// PausedSubscriptions counts the subscriptions whose deliveries pause
// because the store failed.
func (e *Engine) PausedSubscriptions() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	now := e.clock.Now()
	for l := range e.paused {
		if !now.Before(l.pausedUntil) {
			delete(e.paused, l)
		}
	}
	return len(e.paused)
}

const (
	storeErrorPause    = 5 * time.Second
	maxStoreErrorPause = time.Minute
)

// knownEmpty reports whether the lane's last load found everything due and
// nothing was announced or retried since; e.mu held. It saves reading the
// queue twice more for every message of a quiet subscription.
func (e *Engine) knownEmpty(l *lane) bool {
	if !l.exhausted || l.rewind || e.ctx.Err() != nil {
		return false
	}
	return l.next.IsZero() || e.clock.Now().Before(l.next)
}

// loadDue returns due deliveries of an enabled, known subscription.
func (e *Engine) loadDue(subID string, from time.Time, skip map[string]bool, limit int) ([]Delivery, time.Time, error) {
	if e.ctx.Err() != nil {
		return nil, time.Time{}, nil
	}
	e.loads.Add(1)
	if _, ok := e.workable(subID); !ok {
		return nil, time.Time{}, nil // kept until the subscription returns
	}
	if h, err := e.Health(subID); err != nil || h.Disabled {
		return nil, time.Time{}, err // kept until re-enabled
	}
	if e.store.canAdd() != nil {
		// The outcomes could not be stored: look again in a while. The
		// store's guard logs when this starts and ends.
		return nil, e.clock.Now().Add(lowSpacePause), nil
	}
	set, err := e.store.due(subID, from, e.clock.Now(), skip, limit)
	if len(set.orphans) > 0 && err == nil {
		err = e.dropOrphans(set.orphans)
	}
	if len(set.lost) > 0 && err == nil {
		err = e.failLost(subID, set.lost)
	}
	return set.out, set.next, err
}

// dropOrphans deletes queue entries that name a delivery no longer stored,
// and takes them off the count, which the start seeded with them.
func (e *Engine) dropOrphans(keys [][]byte) error {
	return e.queue.change(func() (int64, error) {
		n, err := e.store.dropOrphans(keys)
		return -int64(n), err
	})
}

// failLost fails deliveries whose shared payload is gone, rather than
// keep them queued, unsendable, until an operator disables the
// subscription to discard them.
func (e *Engine) failLost(subID string, lost []Delivery) error {
	var n int
	err := e.queue.change(func() (int64, error) {
		var err error
		n, err = e.store.failLost(lost, e.clock.Now(), e.settings.Load().Retention)
		return -int64(n), err
	})
	if err != nil || n == 0 {
		return err
	}
	e.log().Error("failed queued deliveries whose shared payload is no longer stored (a damaged store); they were not sent",
		zap.String("subscription", subID), zap.Int("count", n), zap.String("first", lost[0].ID))
	return nil
}

// lowSpacePause is how long a lane waits before looking at its queue
// again while the store refuses writes.
const lowSpacePause = time.Second

// idle ends the lane unless work arrived meanwhile; it reports whether
// the lane ended.
func (e *Engine) idle(l *lane, next time.Time, subID string) bool {
	e.mu.Lock()
	if l.kicked && e.ctx.Err() == nil {
		l.kicked = false
		e.mu.Unlock()
		return false
	}
	l.running = false
	e.laneDone()
	e.dropLane(l)
	e.mu.Unlock()
	if !next.IsZero() && e.ctx.Err() == nil {
		e.sched.add(subID, next)
	}
	return true
}

// dropLane forgets the lane of a subscription no longer configured or
// registered, unless it is running: it drops itself once idle; e.mu held.
// Kept, such lanes (about 580 bytes each) added up to one per
// registration ever deleted until Caddy stopped. A known subscription's
// lane is kept even when idle: its cursor lets the next load seek past
// the deleted entries of deliveries already made, which a load from the
// start of the queue must step over one by one until badger compacts
// them away (after a drain of 20,000, dropping idle lanes took the p50
// from publish to first attempt from about 95 to 200 µs; bench/delivery).
func (e *Engine) dropLane(l *lane) {
	if l == nil || l.running || e.lanes[l.subID] != l {
		return
	}
	if _, known := e.subscription(l.subID); known {
		return
	}
	delete(e.lanes, l.subID)
	delete(e.paused, l)
}

// forgetRemoved drops the lane of a subscription just removed.
func (e *Engine) forgetRemoved(subID string) {
	e.mu.Lock()
	e.dropLane(e.lanes[subID])
	e.mu.Unlock()
}

// waitProgress waits for an attempt in flight to end or, through the
// scheduler, for next (a retry) to come due, whichever is first: a slow
// receiver holding one attempt must not delay the others' retries.
func (e *Engine) waitProgress(l *lane, subID string, next time.Time) {
	if !next.IsZero() {
		e.sched.add(subID, next)
	}
	select {
	case <-l.progress:
	case <-e.ctx.Done():
	}
}

// dispatch starts one attempt once the endpoint and the engine have a free
// slot; false when the engine is stopping.
func (e *Engine) dispatch(l *lane, slots chan struct{}, d Delivery) bool {
	workers := *e.workers.Load()
	for _, sem := range []chan struct{}{slots, workers} {
		select {
		case sem <- struct{}{}:
		case <-e.ctx.Done():
			if sem == workers {
				<-slots
			}
			e.leave(l, d.ID)
			return false
		}
	}
	if !e.attemptBegins() {
		<-workers
		<-slots
		e.leave(l, d.ID)
		return false
	}
	e.startAttempt(attemptJob{lane: l, d: d, slots: slots, workers: workers})
	return true
}

// leave takes a delivery out of its lane's in-flight set.
func (e *Engine) leave(l *lane, id string) {
	e.mu.Lock()
	delete(l.inflight, id)
	e.mu.Unlock()
	l.signal()
}
