package delivery

import "errors"

// ErrQueueHeld refuses an operation on a subscription's queue while
// another one (a discard, a retry) is rewriting it.
var ErrQueueHeld = errors.New("another operation on this subscription's queue is running; try again when it has ended")

// hold keeps the subscription's lane from loading or attempting anything
// until release, so that an operation can rewrite its queue: workable
// reports the subscription absent meanwhile. An attempt is in its lane's
// inflight set from before it looks the subscription up until it is
// settled, so once inFlight is 0 under a hold, none can start.
func (e *Engine) hold(subID string) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.held[subID] {
		return ErrQueueHeld
	}
	e.held[subID] = true
	e.holds.Add(1)
	return nil
}

// release ends a hold and wakes the lane: what the operation left (or
// what was queued meanwhile) goes out.
func (e *Engine) release(subID string) {
	e.mu.Lock()
	delete(e.held, subID)
	e.holds.Add(-1)
	e.mu.Unlock()
	e.wake(subID)
}

// inFlight counts the subscription's deliveries being attempted or
// waiting to be settled.
func (e *Engine) inFlight(subID string) int {
	e.mu.Lock()
	defer e.mu.Unlock()
	if l := e.lanes[subID]; l != nil {
		return len(l.inflight)
	}
	return 0
}

// workable returns the subscription whose queue a lane may work on: a
// registered one not held.
func (e *Engine) workable(id string) (*Subscription, bool) {
	sub, ok := e.subscription(id)
	if ok && e.holds.Load() > 0 {
		e.mu.Lock()
		ok = !e.held[id]
		e.mu.Unlock()
	}
	return sub, ok
}
