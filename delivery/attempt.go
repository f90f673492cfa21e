package delivery

import (
	"math/rand/v2"
	"net/url"
	"time"

	"go.uber.org/zap"
)

// attemptJob is one attempt holding its endpoint and worker slots.
type attemptJob struct {
	lane           *lane
	d              Delivery
	slots, workers chan struct{}
}

// startAttempt hands job to an idle attempt goroutine, or starts one.
// Keeping them for a while saves growing a fresh stack through the HTTP
// client for every attempt (5% of the drain's CPU).
func (e *Engine) startAttempt(job attemptJob) {
	select {
	case e.jobs <- job:
	default:
		e.wg.Add(1)
		go e.attempter(job)
	}
}

// attempter runs attempts until it has been idle for attempterIdle.
func (e *Engine) attempter(job attemptJob) {
	defer e.wg.Done()
	idle := time.NewTimer(attempterIdle)
	defer idle.Stop()
	for {
		e.runAttempt(job)
		idle.Reset(attempterIdle)
		select {
		case job = <-e.jobs:
		case <-idle.C:
			return
		case <-e.ctx.Done():
			return
		}
	}
}

const attempterIdle = 10 * time.Second

// runAttempt makes the attempt that dispatch counted (attemptBegins) and
// hands its outcome to the settler, which outlives every counted attempt.
func (e *Engine) runAttempt(job attemptJob) {
	defer e.attemptEnds()
	var out settled
	recorded := e.attempt(&job.d, &out)
	<-job.workers
	<-job.slots
	if !recorded {
		e.leave(job.lane, job.d.ID)
		return
	}
	e.settleCh <- settleReq{settled: out, lane: job.lane}
}

type settleReq struct {
	settled
	lane *lane
}

// settler stores attempt outcomes in as few transactions as the rate
// allows: whatever queued up while the previous commit ran goes into the
// next. A crash before a commit only means those deliveries are attempted
// again (delivery is at least once).
//
// It ends once stop is closed and nothing is left to record.
func (e *Engine) settler(stop <-chan struct{}) {
	defer e.wg.Done()
	const maxBatch = 512
	var reqs []settleReq
	var batch []settled
	for {
		reqs, batch = reqs[:0], batch[:0]
		select {
		case r := <-e.settleCh:
			reqs = append(reqs, r)
		case <-stop:
			select {
			case r := <-e.settleCh:
				reqs = append(reqs, r)
			default:
				return
			}
		}
	fill:
		for len(reqs) < maxBatch {
			select {
			case r := <-e.settleCh:
				reqs = append(reqs, r)
			default:
				break fill
			}
		}
		for _, r := range reqs {
			batch = append(batch, r.settled)
		}
		var stored int
		err := e.queue.change(func() (int64, error) {
			var err error
			stored, err = e.store.settle(batch, e.settings.Load().Retention)
			return -int64(leaving(batch[:stored])), err
		})
		if err != nil {
			e.log().Error("recording delivery attempts", zap.Int("deliveries", len(batch)-stored), zap.Error(err))
		}
		e.returnToLanes(reqs, stored)
	}
}

// returnToLanes takes settled deliveries out of flight in their lanes;
// the first stored of them had their outcome recorded.
func (e *Engine) returnToLanes(reqs []settleReq, stored int) {
	for i, r := range reqs {
		// A delivery still queued must be read again. A load that began
		// while it was in flight skipped it, so the rewind is set in the
		// same section that takes it out of flight.
		e.mu.Lock()
		switch {
		case i >= stored:
			// Unrecorded, the delivery is still queued, maybe behind the
			// lane's cursor: read the queue again from its start, after a
			// pause, since the store is failing.
			r.lane.rewindFrom(time.Time{})
			e.pauseAfterStoreError(r.lane)
		case r.d.State == StatePending: // a retry went back in the queue
			r.lane.rewindFrom(r.d.NextAttempt)
			fallthrough
		default:
			r.lane.storeFailures = 0 // an outcome was stored
		}
		delete(r.lane.inflight, r.d.ID)
		e.mu.Unlock()
		r.lane.signal()
	}
}

// leaving counts the outcomes that take their delivery out of the queue:
// delivered or failed, not a retry.
func leaving(outcomes []settled) int {
	n := 0
	for i := range outcomes {
		if outcomes[i].d.State != StatePending {
			n++
		}
	}
	return n
}

// attempt makes one delivery attempt and fills in its outcome; false if
// there is nothing to record.
func (e *Engine) attempt(d *Delivery, out *settled) bool {
	sub, ok := e.workable(d.SubscriptionID)
	if !ok {
		return false
	}
	s := e.settings.Load()
	started := e.clock.Now()
	res := send(e.attemptCtx, s.client, sub, e.targetURL(sub), &d.Message, s.UserAgent, s.Timeout, started)
	if e.attemptCtx.Err() != nil {
		return false // cut short by Shutdown: the queue still has it, it will be retried
	}
	now := e.clock.Now()
	queuedAt := d.NextAttempt
	d.Attempts++
	d.LastStatus, d.LastError, d.UpdatedAt = res.status, res.errorText(), now
	switch {
	case res.success():
		d.State, d.NextAttempt = StateDelivered, time.Time{}
	case d.Attempts > len(s.Retry):
		d.State, d.NextAttempt = StateFailed, time.Time{}
	default:
		d.NextAttempt = now.Add(retryDelay(s.Retry[d.Attempts-1], res.retryAfter))
	}
	att := Attempt{
		DeliveryID: d.ID, SubscriptionID: sub.ID, MessageID: d.Message.ID, Event: d.Message.Event,
		N: d.Attempts, At: now, Status: res.status, Error: d.LastError, Duration: res.duration, Success: res.success(),
	}
	*out = settled{d: *d, queuedAt: queuedAt, att: att}
	if f := e.observer.Load(); f != nil {
		(*f)(att, d.State)
	}
	e.logAttempt(sub, d, res)
	out.storeSuccess = e.recordHealth(sub, res, started, now)
	return true
}

// retryDelay spreads retries by ±10% so that a receiver coming back is not
// hit by every queued message at once; a longer Retry-After wins.
func retryDelay(base, retryAfter time.Duration) time.Duration {
	d := base
	if j := int64(base / 10); j > 0 {
		d += time.Duration(rand.Int64N(2*j+1) - j)
	}
	return max(d, retryAfter)
}

func (e *Engine) logAttempt(sub *Subscription, d *Delivery, res result) {
	level := zap.DebugLevel
	if !res.success() {
		level = zap.InfoLevel
	}
	if d.State == StateFailed {
		level = zap.WarnLevel
	}
	ce := e.log().Check(level, "webhook delivery attempt")
	if ce == nil {
		return
	}
	ce.Write(
		zap.String("subscription", sub.ID), zap.String("url", RedactURL(sub.URL)),
		zap.String("event", d.Message.Event), zap.String("message_id", d.Message.ID),
		zap.Int("attempt", d.Attempts), zap.Int("status", res.status), zap.String("state", string(d.State)),
		zap.String("error", d.LastError), zap.Duration("duration", res.duration),
		zap.Timep("next_attempt", timeOrNil(d.NextAttempt)),
	)
}

func timeOrNil(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}

// RedactURL drops credentials and the query (which often carries a token)
// from a URL meant for logs and operators.
func RedactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return ""
	}
	u.User = nil
	if u.RawQuery != "" {
		u.RawQuery = "REDACTED"
	}
	return u.String()
}
