package delivery

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dgraph-io/badger/v4"
	"go.uber.org/zap"

	"github.com/hookgate/caddy-webhook/internal/store"
)

// Clock is the engine's source of time.
type Clock interface{ Now() time.Time }

type systemClock struct{}

func (systemClock) Now() time.Time { return time.Now() }

// EventEndpointDisabled is published when an endpoint gets disabled.
const EventEndpointDisabled = "endpoint.disabled"

// Engine queues messages durably and delivers them. One Engine serves a
// database; configuration can change while it runs (Configure).
type Engine struct {
	store  *Store
	clock  Clock
	logger atomic.Pointer[zap.Logger]

	settings atomic.Pointer[settings]
	workers  atomic.Pointer[chan struct{}]

	subsMu     sync.Mutex // serializes changes to registered and the index
	registered map[string]*Subscription
	index      atomic.Pointer[subIndex]
	// targets caches each indexed subscription's parsed URL (parsing it
	// was 6% of a delivery's CPU); replaced with the index.
	targets atomic.Pointer[sync.Map]

	healthMu sync.Mutex
	health   map[string]*Health

	mu    sync.Mutex
	lanes map[string]*lane
	// Lanes run as goroutines, at most maxLanes() at once; the others
	// wait their turn in order. Without the bound a fan-out to 100,000
	// subscriptions started 100,000 goroutines, each with an iterator.
	activeLanes  int
	waitingLanes []waitingLane
	ctx          context.Context
	cancel       context.CancelFunc
	wg           sync.WaitGroup
	started      bool

	sched    *scheduler
	settleCh chan settleReq
	jobs     chan attemptJob // to idle attempt goroutines

	queued   atomic.Int64 // pending deliveries, for QueueDepth
	loads    atomic.Int64 // reads of a lane's queue
	observer atomic.Pointer[func(Attempt, State)]
}

// settings is a Config ready for use.
type settings struct {
	Config
	client *http.Client
	static []*Subscription
}

// subIndex finds subscriptions by ID and by tenant.
type subIndex struct {
	byID     map[string]*Subscription
	byTenant map[string][]*Subscription
}

type waitingLane struct {
	subID string
	l     *lane
}

// lane tracks the runner of one subscription's queue.
type lane struct {
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
}

// NewEngine makes an engine over store. A nil clock means the wall clock.
func NewEngine(store *Store, logger *zap.Logger, clock Clock) *Engine {
	if clock == nil {
		clock = systemClock{}
	}
	e := &Engine{
		store: store, clock: clock,
		registered: map[string]*Subscription{},
		health:     map[string]*Health{},
		lanes:      map[string]*lane{},
	}
	e.sched = newScheduler(e)
	e.settleCh = make(chan settleReq, 1024)
	e.jobs = make(chan attemptJob)
	e.SetLogger(logger)
	return e
}

// SetLogger replaces the logger; the engine outlives configs, each of
// which brings its own.
func (e *Engine) SetLogger(l *zap.Logger) {
	if l == nil {
		l = zap.NewNop()
	}
	e.logger.Store(l)
}

func (e *Engine) log() *zap.Logger { return e.logger.Load() }

// SetObserver installs f to be told of every recorded attempt and the
// state it left its delivery in (for metrics). Nil removes it.
func (e *Engine) SetObserver(f func(Attempt, State)) {
	if f == nil {
		e.observer.Store(nil)
		return
	}
	e.observer.Store(&f)
}

// QueueDepth is the number of pending deliveries.
func (e *Engine) QueueDepth() int64 { return e.queued.Load() }

// DisabledEndpoints counts the known subscriptions that are disabled.
func (e *Engine) DisabledEndpoints() int {
	n := 0
	for _, s := range e.Subscriptions() {
		if h, err := e.Health(s.ID); err == nil && h.Disabled {
			n++
		}
	}
	return n
}

// Configure validates cfg and makes it current.
func (e *Engine) Configure(cfg Config) error {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return err
	}
	s := &settings{Config: cfg, client: newClient(cfg.AllowPrivateTargets, cfg.Workers)}
	for i := range cfg.Subscriptions {
		s.static = append(s.static, &cfg.Subscriptions[i])
	}
	if old := e.settings.Swap(s); old != nil {
		old.client.CloseIdleConnections()
	}
	if w := e.workers.Load(); w == nil || cap(*w) != cfg.Workers {
		ch := make(chan struct{}, cfg.Workers)
		e.workers.Store(&ch)
	}
	e.subsMu.Lock()
	e.rebuildIndex()
	e.subsMu.Unlock()
	e.Kick()
	return nil
}

// rebuildIndex merges static and registered subscriptions; subsMu held.
func (e *Engine) rebuildIndex() {
	idx := &subIndex{byID: map[string]*Subscription{}, byTenant: map[string][]*Subscription{}}
	add := func(s *Subscription) {
		idx.byID[s.ID] = s
		idx.byTenant[s.Tenant] = append(idx.byTenant[s.Tenant], s)
	}
	if s := e.settings.Load(); s != nil {
		for _, sub := range s.static {
			add(sub)
		}
	}
	for _, sub := range e.registered {
		if _, clash := idx.byID[sub.ID]; !clash {
			add(sub)
		}
	}
	e.targets.Store(&sync.Map{})
	e.index.Store(idx)
}

// targetURL returns sub's URL parsed; nil if it does not parse (the
// attempt then reports why).
func (e *Engine) targetURL(sub *Subscription) *url.URL {
	m := e.targets.Load()
	if u, ok := m.Load(sub); ok {
		return u.(*url.URL)
	}
	u, err := url.Parse(sub.URL)
	if err != nil {
		return nil
	}
	m.Store(sub, u)
	return u
}

// Start loads registered subscriptions and begins delivering, including
// whatever was pending when the process last stopped.
func (e *Engine) Start() error {
	if e.settings.Load() == nil {
		return errors.New("delivery engine started before it was configured")
	}
	subs, err := e.store.Subscriptions()
	if err != nil {
		return fmt.Errorf("loading subscriptions: %w", err)
	}
	e.subsMu.Lock()
	for i := range subs {
		e.registered[subs[i].ID] = &subs[i]
	}
	e.rebuildIndex()
	e.subsMu.Unlock()

	e.mu.Lock()
	if e.started {
		e.mu.Unlock()
		return nil
	}
	e.ctx, e.cancel = context.WithCancel(context.Background())
	e.started = true
	// Lanes of an earlier run may have ended without going idle.
	e.lanes, e.activeLanes, e.waitingLanes = map[string]*lane{}, 0, nil
	e.mu.Unlock()
	// Seed the pending count once; from here on it is kept up to date.
	n, err := e.store.countQueued()
	if err != nil {
		return fmt.Errorf("counting the delivery queue: %w", err)
	}
	e.queued.Store(n)
	e.wg.Add(2)
	go e.sched.run(e.ctx)
	go e.settler()
	e.Kick()
	return nil
}

// Stop cancels attempts in flight (they will be made again after a
// restart) and waits for the workers to finish.
func (e *Engine) Stop() {
	e.mu.Lock()
	if !e.started {
		e.mu.Unlock()
		return
	}
	e.started = false
	e.cancel()
	e.mu.Unlock()
	e.wg.Wait()
}

// Kick makes every subscription look at its queue now. Useful after a
// clock jump in tests and after configuration changes.
func (e *Engine) Kick() {
	idx := e.index.Load()
	if idx == nil {
		return
	}
	for id := range idx.byID {
		e.wake(id)
	}
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
		l = &lane{inflight: map[string]bool{}, progress: make(chan struct{}, 1)}
		e.lanes[subID] = l
	}
	if !l.rewind || due.Before(l.rewindTo) {
		l.rewindTo = due // zero: from the start
	}
	l.rewind = true
	if l.running {
		l.kicked = true
		// A lane waiting for its attempts in flight must look at the new
		// entry now: free slots would otherwise stay idle until one of
		// those attempts ends, which a slow receiver can make seconds.
		select {
		case l.progress <- struct{}{}:
		default:
		}
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
		if e.knownEmpty(l) {
			busy, next := len(l.inflight) > 0, l.next
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
		if err != nil && e.ctx.Err() == nil {
			e.log().Error("reading delivery queue", zap.String("subscription", subID), zap.Error(err))
			next = e.clock.Now().Add(5 * time.Second)
		}
		e.mu.Lock()
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
	if _, ok := e.subscription(subID); !ok {
		return nil, time.Time{}, nil // kept until the subscription returns
	}
	if h, err := e.Health(subID); err != nil || h.Disabled {
		return nil, time.Time{}, err // kept until re-enabled
	}
	return e.store.due(subID, from, e.clock.Now(), skip, limit)
}

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
	e.mu.Unlock()
	if !next.IsZero() && e.ctx.Err() == nil {
		e.sched.add(subID, next)
	}
	return true
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
	e.startAttempt(attemptJob{lane: l, d: d, slots: slots, workers: workers})
	return true
}

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

func (e *Engine) runAttempt(job attemptJob) {
	var out settled
	recorded := e.attempt(&job.d, &out)
	<-job.workers
	<-job.slots
	if !recorded {
		e.leave(job.lane, job.d.ID)
		return
	}
	select {
	case e.settleCh <- settleReq{settled: out, lane: job.lane}:
	case <-e.ctx.Done():
		e.leave(job.lane, job.d.ID) // not recorded: attempted again after a restart
	}
}

// leave takes a delivery out of its lane's in-flight set.
func (e *Engine) leave(l *lane, id string) {
	e.mu.Lock()
	delete(l.inflight, id)
	e.mu.Unlock()
	select {
	case l.progress <- struct{}{}:
	default:
	}
}

type settleReq struct {
	settled
	lane *lane
}

// settler stores attempt outcomes in as few transactions as the rate
// allows: whatever queued up while the previous commit ran goes into the
// next. A crash before a commit only means those deliveries are attempted
// again (delivery is at least once).
func (e *Engine) settler() {
	defer e.wg.Done()
	const maxBatch = 512
	var reqs []settleReq
	var batch []settled
	for {
		reqs, batch = reqs[:0], batch[:0]
		select {
		case r := <-e.settleCh:
			reqs = append(reqs, r)
		case <-e.ctx.Done():
			return
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
		err := e.store.settle(batch, e.settings.Load().Retention)
		if err != nil {
			e.log().Error("recording delivery attempts", zap.Int("deliveries", len(batch)), zap.Error(err))
		}
		for _, r := range reqs {
			e.mu.Lock()
			switch {
			case err != nil:
				// Unrecorded, the delivery is still queued, maybe behind
				// the lane's cursor: read the queue again from its start.
				r.lane.rewind, r.lane.rewindTo = true, time.Time{}
			case r.d.State == StatePending: // a retry went back in the queue
				r.lane.exhausted = false
			default: // delivered or failed: out of the queue count once stored
				e.queued.Add(-1)
			}
			e.mu.Unlock()
			e.leave(r.lane, r.d.ID)
		}
	}
}

// attempt makes one delivery attempt and fills in its outcome; false if
// there is nothing to record.
func (e *Engine) attempt(d *Delivery, out *settled) bool {
	sub, ok := e.subscription(d.SubscriptionID)
	if !ok {
		return false
	}
	s := e.settings.Load()
	res := send(e.ctx, s.client, sub, e.targetURL(sub), &d.Message, s.UserAgent, s.Timeout, e.clock.Now())
	if e.ctx.Err() != nil {
		return false // shutting down: the queue still has it, it will be retried
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
	e.recordHealth(sub, res, now)
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

// subscription finds a static or registered subscription.
func (e *Engine) subscription(id string) (*Subscription, bool) {
	idx := e.index.Load()
	if idx == nil {
		return nil, false
	}
	s, ok := idx.byID[id]
	return s, ok
}

// Publish stores msg with one delivery per matching subscription and
// starts delivering. With a message ID that was already published for the
// tenant, nothing new is stored and the earlier result is returned.
func (e *Engine) Publish(msg Message) (PublishResult, error) {
	settings := e.settings.Load()
	if settings == nil {
		return PublishResult{}, ErrNotConfigured
	}
	now := e.clock.Now().UTC()
	fresh := msg.ID == "" // no earlier publish can have stored deliveries
	if fresh {
		msg.ID = NewID("msg_", now)
	} else {
		rec, found, err := e.store.published(msg.Tenant, msg.ID)
		if err != nil {
			return PublishResult{}, err
		}
		if found {
			return PublishResult{ID: msg.ID, Deliveries: rec.Deliveries, Duplicate: true}, nil
		}
	}
	msg.CreatedAt = now
	var subs []*Subscription
	if idx := e.index.Load(); idx != nil {
		for _, s := range idx.byTenant[msg.Tenant] {
			if s.Matches(&msg) {
				subs = append(subs, s)
			}
		}
	}
	added, err := e.store.enqueue(msg, subs, fresh, now, settings.Retention)
	e.queued.Add(int64(added))
	if err != nil {
		return PublishResult{}, err
	}
	for _, s := range subs {
		e.wakeFrom(s.ID, now)
	}
	return PublishResult{ID: msg.ID, Deliveries: len(subs)}, nil
}

// ErrNotConfigured is returned by Publish before the first Configure.
var ErrNotConfigured = errors.New("the delivery engine has no configuration yet")

// PublishResult is the answer to a publish.
type PublishResult struct {
	ID         string `json:"id"`
	Deliveries int    `json:"deliveries"`
	// Duplicate is set when the ID had been published before.
	Duplicate bool `json:"-"`
}

// Health returns an endpoint's health record.
func (e *Engine) Health(subID string) (Health, error) {
	e.healthMu.Lock()
	defer e.healthMu.Unlock()
	h, err := e.healthOf(subID)
	if err != nil {
		return Health{}, err
	}
	return *h, nil
}

// healthOf returns the cached record, loading it once; healthMu held.
func (e *Engine) healthOf(subID string) (*Health, error) {
	if h, ok := e.health[subID]; ok {
		return h, nil
	}
	h, err := e.store.health(subID)
	if err != nil {
		return nil, err
	}
	e.health[subID] = &h
	return &h, nil
}

// recordHealth tracks failures and disables an endpoint that answered 410
// Gone or failed without a success for DisableAfter. Only transitions are
// written to the store.
func (e *Engine) recordHealth(sub *Subscription, res result, now time.Time) {
	e.healthMu.Lock()
	defer e.healthMu.Unlock()
	h, err := e.healthOf(sub.ID)
	if err != nil {
		e.log().Error("reading endpoint health", zap.String("subscription", sub.ID), zap.Error(err))
		return
	}
	changed, disabled := false, false
	if res.success() {
		h.LastSuccess = now
		changed = !h.FailingSince.IsZero()
		h.FailingSince = time.Time{}
	} else {
		if h.FailingSince.IsZero() {
			h.FailingSince, changed = now, true
		}
		reason := ""
		switch {
		case res.status == http.StatusGone:
			reason = "receiver answered 410 Gone"
		case now.Sub(h.FailingSince) >= e.settings.Load().DisableAfter:
			reason = "failing without a success since " + h.FailingSince.UTC().Format(time.RFC3339)
		}
		if reason != "" && !h.Disabled {
			h.Disabled, h.DisabledAt, h.Reason = true, now, reason
			changed, disabled = true, true
		}
	}
	if changed {
		if err := e.store.saveHealth(sub.ID, *h); err != nil {
			e.log().Error("saving endpoint health", zap.String("subscription", sub.ID), zap.Error(err))
		}
	}
	if disabled {
		snapshot := *h
		// Publishing takes other locks; do it after this one is released.
		// The attempt holding this goroutine is counted in wg, so Stop
		// cannot have started waiting yet.
		e.wg.Add(1)
		go func() {
			defer e.wg.Done()
			e.announceDisabled(sub, snapshot)
		}()
	}
}

// announceDisabled logs the disabling and publishes endpoint.disabled to
// the subscription's tenant.
func (e *Engine) announceDisabled(sub *Subscription, h Health) {
	e.log().Warn("webhook endpoint disabled",
		zap.String("subscription", sub.ID), zap.String("url", RedactURL(sub.URL)),
		zap.String("reason", h.Reason), zap.Time("failing_since", h.FailingSince))
	data, _ := json.Marshal(map[string]any{
		"subscription_id": sub.ID,
		"name":            sub.Name,
		"url":             RedactURL(sub.URL),
		"reason":          h.Reason,
		"failing_since":   h.FailingSince.UTC(),
		"disabled_at":     h.DisabledAt.UTC(),
	})
	msg := Message{Event: EventEndpointDisabled, Tenant: sub.Tenant, Data: data}
	if _, err := e.Publish(msg); err != nil {
		e.log().Error("publishing endpoint.disabled", zap.String("subscription", sub.ID), zap.Error(err))
	}
}

// Enable re-enables a disabled endpoint; its kept deliveries resume.
func (e *Engine) Enable(subID string) error {
	e.healthMu.Lock()
	h, err := e.healthOf(subID)
	if err == nil {
		*h = Health{LastSuccess: h.LastSuccess}
		err = e.store.saveHealth(subID, *h)
	}
	e.healthMu.Unlock()
	if err != nil {
		return err
	}
	e.wake(subID)
	return nil
}

// PutSubscription stores a registered subscription (new or changed).
func (e *Engine) PutSubscription(sub Subscription) error {
	if err := ValidateSubscription(&sub); err != nil {
		return err
	}
	e.subsMu.Lock()
	if err := e.store.putSubscription(&sub); err != nil {
		e.subsMu.Unlock()
		return err
	}
	e.registered[sub.ID] = &sub
	e.rebuildIndex()
	e.subsMu.Unlock()
	// Deliveries kept while it was deleted (or queued before a change)
	// resume now, not at the next event for it.
	e.wake(sub.ID)
	return nil
}

// DeleteSubscription removes a registered subscription. Its pending
// deliveries stay in the queue but are no longer attempted.
func (e *Engine) DeleteSubscription(id string) error {
	e.subsMu.Lock()
	defer e.subsMu.Unlock()
	if err := e.store.deleteSubscription(id); err != nil {
		return err
	}
	delete(e.registered, id)
	e.rebuildIndex()
	return nil
}

// Subscriptions lists static and registered subscriptions.
func (e *Engine) Subscriptions() []Subscription {
	idx := e.index.Load()
	if idx == nil {
		return nil
	}
	out := make([]Subscription, 0, len(idx.byID))
	for _, s := range idx.byID {
		out = append(out, *s)
	}
	return out
}

// Subscription returns a static or registered subscription by ID.
func (e *Engine) Subscription(id string) (Subscription, bool) {
	s, ok := e.subscription(id)
	if !ok {
		return Subscription{}, false
	}
	return *s, true
}

// Probe sends one request for event with data to sub's URL, with its
// authentication and under the same rules as a delivery (timeout, no
// redirects, SSRF guard), without queueing or recording anything. It is
// how registrations are verified and test events sent.
func (e *Engine) Probe(sub *Subscription, event string, data []byte) ProbeResult {
	s := e.settings.Load()
	now := e.clock.Now()
	msg := Message{ID: NewID("msg_", now), Event: event, Tenant: sub.Tenant, Data: data, CreatedAt: now}
	ctx := context.Background()
	res := send(ctx, s.client, sub, nil, &msg, s.UserAgent, s.Timeout, now)
	return ProbeResult{Status: res.status, Latency: res.duration, Success: res.success(), Error: res.errorText()}
}

// ProbeResult is the outcome of a Probe.
type ProbeResult struct {
	Status  int
	Latency time.Duration
	Success bool
	Error   string
}

// Redeliver queues a subscription's failed deliveries again, each with a
// fresh retry schedule, and returns how many.
func (e *Engine) Redeliver(subID string) (int, error) {
	n, err := e.store.requeueFailed(subID, e.clock.Now())
	e.queued.Add(int64(n))
	if n > 0 {
		e.wakeFrom(subID, time.Time{})
	}
	return n, err
}

// Credentials returns what a tenant granted to subscriptions of source.
func (e *Engine) Credentials(source, tenant string) (Credentials, bool, error) {
	return e.store.credentials(source, tenant)
}

// SetCredentials stores a tenant's credentials and applies them as Basic
// authentication to every subscription of that tenant and source, in the
// same transaction.
func (e *Engine) SetCredentials(source, tenant string, c Credentials) error {
	e.subsMu.Lock()
	defer e.subsMu.Unlock()
	var changed []*Subscription
	for _, sub := range e.registered {
		if sub.Source == source && sub.Tenant == tenant {
			cp := *sub
			cp.Auth.BasicUser, cp.Auth.BasicPassword = c.ID, c.Secret
			changed = append(changed, &cp)
		}
	}
	err := store.Update(e.store.db, func(txn *badger.Txn) error {
		if err := setJSON(txn, credKey(source, tenant), c, 0); err != nil {
			return err
		}
		for _, sub := range changed {
			if err := setJSON(txn, []byte(prefixSub+sub.ID), sub, 0); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, sub := range changed {
		e.registered[sub.ID] = sub
	}
	e.rebuildIndex()
	return nil
}

// RecentAttempts returns a subscription's latest attempts, newest first.
func (e *Engine) RecentAttempts(subID string, limit int) ([]Attempt, error) {
	return e.store.RecentAttempts(subID, limit)
}

// Store is the engine's store.
func (e *Engine) Store() *Store { return e.store }
