package delivery

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// Clock is the engine's source of time.
type Clock interface{ Now() time.Time }

type systemClock struct{}

func (systemClock) Now() time.Time { return time.Now() }

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
	loaded     bool // registered holds the store's subscriptions; under subsMu
	index      atomic.Pointer[subIndex]
	// targets caches each indexed subscription's parsed URL (parsing it
	// was 6% of a delivery's CPU); replaced with the index.
	targets atomic.Pointer[sync.Map]

	healthMu sync.Mutex
	health   map[string]*Health
	// successStored is each endpoint's LastSuccess as last stored; see
	// recordHealth. Under healthMu.
	successStored map[string]time.Time

	mu    sync.Mutex
	lanes map[string]*lane
	// paused holds the lanes paused after store failures, so that
	// counting them need not look at every lane; those whose pause has
	// ended leave it when it is next counted.
	paused map[*lane]struct{}
	// held holds the subscriptions whose queues an operator's operation
	// (Discard, RetryNow) is rewriting; holds counts them so that
	// workable need not lock when it is 0.
	held  map[string]bool
	holds atomic.Int32
	// Lanes run as goroutines, at most maxLanes() at once; the others
	// wait their turn in order. Without the bound a fan-out to 100,000
	// subscriptions started 100,000 goroutines, each with an iterator.
	activeLanes  int
	waitingLanes []waitingLane
	ctx          context.Context
	cancel       context.CancelFunc
	wg           sync.WaitGroup
	started      bool

	// Attempts in flight outlive ctx: Shutdown lets them end and be
	// recorded, and cancels attemptCtx only if its caller runs out of
	// patience. stopMu orders counting an attempt against Shutdown's
	// reading of the count; the settler runs until stopSettler closes,
	// once no attempt is left to record.
	attemptCtx     context.Context
	cancelAttempts context.CancelFunc
	stopMu         sync.RWMutex
	stopping       bool
	attempts       atomic.Int64
	attemptsIdle   chan struct{}
	stopSettler    chan struct{}

	sched    *scheduler
	settleCh chan settleReq
	jobs     chan attemptJob // to idle attempt goroutines

	queue    queueCount   // pending deliveries, for QueueDepth
	loads    atomic.Int64 // reads of a lane's queue
	observer atomic.Pointer[func(Attempt, State)]
}

// settings is a Config ready for use.
type settings struct {
	Config
	client *http.Client
	static []*Subscription
}

// NewEngine makes an engine over store. A nil clock means the wall clock.
func NewEngine(store *Store, logger *zap.Logger, clock Clock) *Engine {
	if clock == nil {
		clock = systemClock{}
	}
	e := &Engine{
		store: store, clock: clock,
		registered:    map[string]*Subscription{},
		health:        map[string]*Health{},
		successStored: map[string]time.Time{},
		lanes:         map[string]*lane{},
		paused:        map[*lane]struct{}{},
		held:          map[string]bool{},
	}
	e.sched = newScheduler(e)
	e.settleCh = make(chan settleReq, 1024)
	e.jobs = make(chan attemptJob)
	e.attemptsIdle = make(chan struct{}, 1)
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
func (e *Engine) QueueDepth() int64 { return e.queue.load() }

// Configure validates cfg and makes it current. The first Configure also
// loads the registered subscriptions: Caddy may start serving before the
// engine starts, and a publish or a registration API call in that moment
// must already find them.
func (e *Engine) Configure(cfg Config) error {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return err
	}
	if err := e.loadRegistered(); err != nil {
		return err
	}
	s := &settings{Config: cfg, client: newClient(cfg.AllowPrivateTargets, cfg.Workers)}
	for i := range cfg.Subscriptions {
		s.static = append(s.static, &cfg.Subscriptions[i])
	}
	old := e.settings.Swap(s)
	if old != nil {
		old.client.CloseIdleConnections()
	}
	if w := e.workers.Load(); w == nil || cap(*w) != cfg.Workers {
		ch := make(chan struct{}, cfg.Workers)
		e.workers.Store(&ch)
	}
	e.subsMu.Lock()
	e.rebuildIndex()
	e.subsMu.Unlock()
	if old != nil {
		e.reviewRemoved(old.static)
	}
	if err := e.reviewStatic(s.static); err != nil {
		// The endpoints stay as they were, as before a URL change;
		// nothing else depends on this.
		e.log().Error("clearing the health of subscriptions with a new URL", zap.Error(err))
	}
	e.Kick()
	return nil
}

// reviewRemoved forgets the cached health of the static subscriptions
// that a new config dropped (renamed, say; the store keeps the record for
// a return), and warns about those that still have deliveries queued:
// nothing sends those until the subscription is back, and an operator who
// renamed one would not know.
func (e *Engine) reviewRemoved(before []*Subscription) {
	for _, sub := range before {
		if _, ok := e.subscription(sub.ID); ok {
			continue
		}
		e.healthMu.Lock()
		delete(e.health, sub.ID)
		delete(e.successStored, sub.ID)
		e.healthMu.Unlock()
		e.forgetRemoved(sub.ID)
		n, err := e.store.QueueDepth(sub.ID)
		if err != nil {
			e.log().Error("counting the queue of a removed subscription", zap.String("subscription", sub.ID), zap.Error(err))
			continue
		}
		e.warnIfUnserved(sub.ID, n)
	}
}

// warnIfUnserved warns about a subscription's queued deliveries when no
// subscription configured or registered will send them.
func (e *Engine) warnIfUnserved(subID string, queued int) {
	if _, ok := e.subscription(subID); ok || queued == 0 {
		return
	}
	e.log().Warn("deliveries are queued for a subscription that is neither configured nor registered: they wait until it is back, or are discarded through the admin API",
		zap.String("subscription", subID), zap.Int("queued", queued))
}

// loadRegistered reads the registered subscriptions from the store once;
// from then on the engine keeps registered and the store in step.
func (e *Engine) loadRegistered() error {
	e.subsMu.Lock()
	defer e.subsMu.Unlock()
	if e.loaded {
		return nil
	}
	subs, err := e.store.Subscriptions()
	if err != nil {
		return fmt.Errorf("loading subscriptions: %w", err)
	}
	for i := range subs {
		e.registered[subs[i].ID] = &subs[i]
	}
	e.loaded = true
	return nil
}

// rebuildIndex indexes static and registered subscriptions anew; subsMu
// held.
func (e *Engine) rebuildIndex() {
	var static []*Subscription
	if s := e.settings.Load(); s != nil {
		static = s.static
	}
	e.targets.Store(&sync.Map{})
	e.index.Store(newSubIndex(static, e.registered))
}

// indexRegistered puts a registered subscription, new or changed, in the
// index; subsMu held.
func (e *Engine) indexRegistered(sub *Subscription) {
	x := e.index.Load()
	if x == nil {
		e.rebuildIndex()
		return
	}
	next, replaced := x.with(sub)
	e.index.Store(next)
	if replaced != nil {
		e.targets.Load().Delete(replaced)
	}
}

// unindexRegistered takes a registered subscription out of the index;
// subsMu held.
func (e *Engine) unindexRegistered(sub *Subscription) {
	if x := e.index.Load(); x != nil && sub != nil {
		e.index.Store(x.without(sub))
		e.targets.Load().Delete(sub)
	}
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

// Start begins delivering, including whatever was pending when the
// process last stopped. The engine must have been configured.
func (e *Engine) Start() error {
	if e.settings.Load() == nil {
		return errors.New("delivery engine started before it was configured")
	}
	e.mu.Lock()
	started := e.started
	e.mu.Unlock()
	if started {
		return nil
	}
	// Counted before the engine counts as started, so that a Start that
	// fails here can be made again. Callers do not run two Starts at once.
	queued, err := e.queue.seed(e.store)
	if err != nil {
		return fmt.Errorf("counting the delivery queue: %w", err)
	}
	for id, n := range queued {
		e.warnIfUnserved(id, n)
	}
	e.mu.Lock()
	e.ctx, e.cancel = context.WithCancel(context.Background())
	e.attemptCtx, e.cancelAttempts = context.WithCancel(context.Background())
	e.stopSettler = make(chan struct{})
	e.stopMu.Lock()
	e.stopping = false
	e.stopMu.Unlock()
	e.started = true
	// Lanes of an earlier run may have ended without going idle.
	e.lanes, e.activeLanes, e.waitingLanes = map[string]*lane{}, 0, nil
	clear(e.paused)
	e.mu.Unlock()
	e.wg.Add(3)
	go e.sched.run(e.ctx)
	go e.settler(e.stopSettler)
	go e.sweeper(e.ctx)
	e.Kick()
	return nil
}

// Stop cancels attempts in flight (they will be made again after a
// restart) and waits for the workers to finish.
func (e *Engine) Stop() {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	e.Shutdown(ctx)
}

// Shutdown stops starting attempts, lets those in flight end (each within
// the attempt timeout) and records their outcomes, and waits for the
// workers to finish. If ctx ends first, the attempts still in flight are
// canceled and made again after a restart. Canceling an attempt whose
// request the receiver already has means delivering it twice; letting it
// end does not.
func (e *Engine) Shutdown(ctx context.Context) {
	e.mu.Lock()
	if !e.started {
		e.mu.Unlock()
		return
	}
	e.started = false
	e.cancel()
	e.mu.Unlock()
	e.stopMu.Lock()
	e.stopping = true
	e.stopMu.Unlock()
	for e.attempts.Load() > 0 {
		select {
		case <-e.attemptsIdle:
		case <-ctx.Done():
			e.cancelAttempts()
			ctx = context.Background()
		}
	}
	e.cancelAttempts()
	close(e.stopSettler)
	e.wg.Wait()
}

// AttemptsInFlight is how many delivery attempts are under way.
func (e *Engine) AttemptsInFlight() int64 { return e.attempts.Load() }

// attemptBegins counts an attempt about to start; false once Shutdown has
// begun, when no more may.
func (e *Engine) attemptBegins() bool {
	e.stopMu.RLock()
	defer e.stopMu.RUnlock()
	if e.stopping {
		return false
	}
	e.attempts.Add(1)
	return true
}

func (e *Engine) attemptEnds() {
	if e.attempts.Add(-1) == 0 {
		select {
		case e.attemptsIdle <- struct{}{}:
		default:
		}
	}
}

// Store is the engine's store.
func (e *Engine) Store() *Store { return e.store }
