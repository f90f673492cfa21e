package delivery

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hookgate/caddy-webhook/internal/store"
)

var chaosFor = flag.Duration("chaos", 2*time.Second, "how long each TestOperationsUnderChaos run mixes operations with traffic")

// What a chaos receiver answers, set per subscription while the test runs.
const (
	answerOK = iota
	answerSlow
	answerUnavailable // 503: retried
	answerGone        // 410: disables the endpoint
	answerHang        // past the attempt timeout
	answerKinds
)

// chaosReceiver serves every subscription of the test, at
// /<subscription name>/<version>; the version changes with the URL.
type chaosReceiver struct {
	*httptest.Server
	answer sync.Map // subscription name -> *atomic.Int32
	mu     sync.Mutex
	hits   map[string]int // "<name> <message ID>" -> requests
	taken  map[string]int // of those, the ones answered 204
	// takenAt: when each request answered 204 came, and to which URL, to
	// tell why a delivery was taken twice.
	takenAt map[string][]take
	wrong   []string // message IDs that came with another payload, or unknown
}

// chaosData is the payload of the i-th message of a publisher: every third
// one large enough to be stored once for all its subscriptions.
func chaosData(i int) []byte {
	if i%3 == 0 {
		return fmt.Appendf(nil, `{"n":%d,"pad":"%s"}`, i, strings.Repeat("x", sharedPayloadMin))
	}
	return fmt.Appendf(nil, `{"n":%d}`, i)
}

func newChaosReceiver(t *testing.T, timeout time.Duration) *chaosReceiver {
	rcv := &chaosReceiver{hits: map[string]int{}, taken: map[string]int{}, takenAt: map[string][]take{}}
	rcv.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// When the request came, which tells the attempt that carried it
		// however long this handler then takes.
		arrived := time.Now()
		name, _, _ := strings.Cut(strings.TrimPrefix(r.URL.Path, "/"), "/")
		id := r.Header.Get("Webhook-Id")
		key := name + " " + id
		body, _ := io.ReadAll(r.Body)
		var p, i int
		_, err := fmt.Sscanf(id, "p%d-%d", &p, &i)
		// Besides the publishers' messages, only the engine's own
		// endpoint.disabled notices (with IDs it generates) may come.
		notice := err != nil && r.Header.Get("X-Event-Name") == EventEndpointDisabled
		rcv.mu.Lock()
		rcv.hits[key]++
		if !notice && (err != nil || !bytes.Equal(body, chaosData(i))) {
			rcv.wrong = append(rcv.wrong, id)
		}
		rcv.mu.Unlock()
		switch rcv.answerFor(name).Load() {
		case answerSlow:
			time.Sleep(time.Duration(rand.IntN(50)) * time.Millisecond)
		case answerUnavailable:
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		case answerGone:
			w.WriteHeader(http.StatusGone)
			return
		case answerHang:
			select {
			case <-r.Context().Done():
			case <-time.After(timeout + 100*time.Millisecond):
			}
			return
		}
		w.WriteHeader(http.StatusNoContent)
		rcv.mu.Lock()
		rcv.taken[key]++
		rcv.takenAt[key] = append(rcv.takenAt[key], take{arrived, r.URL.Path})
		rcv.mu.Unlock()
	}))
	t.Cleanup(rcv.Close)
	return rcv
}

type take struct {
	at   time.Time
	path string
}

func (tk take) String() string { return tk.at.Format("15:04:05.000000") + " " + tk.path }

func (rcv *chaosReceiver) answerFor(name string) *atomic.Int32 {
	v, _ := rcv.answer.LoadOrStore(name, new(atomic.Int32))
	return v.(*atomic.Int32)
}

// took is how many times the receiver answered a message's delivery to
// a subscription with 204.
func (rcv *chaosReceiver) took(name, msgID string) int {
	rcv.mu.Lock()
	defer rcv.mu.Unlock()
	return rcv.taken[name+" "+msgID]
}

func (rcv *chaosReceiver) requests() (total int) {
	rcv.mu.Lock()
	defer rcv.mu.Unlock()
	for _, n := range rcv.hits {
		total += n
	}
	return total
}

// chaos is the state of TestOperationsUnderChaos: an engine that is
// restarted now and then, and what its operator did.
type chaos struct {
	t   *testing.T
	dir string
	rcv *chaosReceiver
	cfg Config

	mu sync.RWMutex // held for writing while the engine restarts
	e  *Engine
	db *store.DB

	// faulty fails the store's writes (as a disk refusing them would);
	// full refuses what adds data (as a store low on space does).
	faulty, full atomic.Bool
	// hard: writes fail now and then and restarts may cut attempts short,
	// both of which make a delivery go out again. Without them no
	// delivery may be taken twice.
	hard bool

	// Changed by the first operator only, until the end.
	static     map[string]bool // static subscriptions in the config
	registered map[string]bool // registered subscriptions stored
	version    map[string]int  // of each subscription's URL

	opsMu sync.Mutex
	ops   map[string]int // operations done, by outcome
}

var (
	chaosStatic     = []string{"s1", "s2"}
	chaosRegistered = []string{"r1", "r2", "r3"}
)

func (c *chaos) open() error {
	db, err := store.Open(c.dir, store.Options{})
	if err != nil {
		return err
	}
	s := NewStore(db.DB)
	s.writeFault = func(string) error {
		if c.faulty.Load() {
			return errChaosFault
		}
		return nil
	}
	s.SetWritable(func() error {
		if c.full.Load() {
			return errChaosFull
		}
		return nil
	})
	e := NewEngine(s, nil, nil)
	c.e, c.db = e, db
	if err := e.Configure(c.config()); err != nil {
		return err
	}
	return e.Start()
}

// close stops the engine, letting attempts in flight end if graceful
// (they all can: the wait is longer than an attempt), and closes the
// store.
func (c *chaos) close(graceful bool) error {
	if graceful {
		ctx, cancel := context.WithTimeout(context.Background(), c.cfg.Timeout+2*time.Second)
		c.e.Shutdown(ctx)
		cancel()
	} else {
		c.e.Stop()
	}
	return c.db.Close()
}

func (c *chaos) restart(graceful bool) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.close(graceful); err != nil {
		return err
	}
	return c.open()
}

func (c *chaos) url(name string) string {
	return fmt.Sprintf("%s/%s/%d", c.rcv.URL, name, c.version[name])
}

func (c *chaos) config() Config {
	cfg := c.cfg
	cfg.Subscriptions = nil
	for _, name := range chaosStatic {
		if c.static[name] {
			cfg.Subscriptions = append(cfg.Subscriptions, sub(name, c.url(name)))
		}
	}
	return cfg
}

func (c *chaos) registration(name string) Subscription {
	return Subscription{ID: "sub_" + name, Name: name, Tenant: "t", URL: c.url(name), Events: []string{"*"}}
}

// subID is the ID of the subscription called name.
func subID(name string) string {
	if strings.HasPrefix(name, "r") {
		return "sub_" + name
	}
	return StaticID(name)
}

var (
	errChaosFault = errors.New("chaos: write refused")
	errChaosFull  = errors.New("chaos: store full")
)

// allowed reports whether err is one an operation may answer while
// others run and the store refuses writes now and then; anything else
// fails the test.
func allowed(err error) bool {
	return err == nil || errors.Is(err, ErrQueueHeld) || errors.Is(err, ErrAttemptsInFlight) ||
		errors.Is(err, ErrSubscriptionActive) || errors.Is(err, errChaosFault) || errors.Is(err, errChaosFull)
}

// refuseWrites makes the store fail writes, or refuse new data, for a
// moment.
func (c *chaos) refuseWrites(r *rand.Rand) string {
	flag, op := &c.faulty, "writes fail"
	if !c.hard || r.IntN(2) == 0 {
		flag, op = &c.full, "store full"
	}
	flag.Store(true)
	time.AfterFunc(time.Duration(r.IntN(100))*time.Millisecond, func() { flag.Store(false) })
	return op
}

// step does one random operation, as an operator, a tenant or a reload
// would. Only the first operator changes subscriptions, receivers, the
// store or the engine; the others work on queues, racing it.
func (c *chaos) step(r *rand.Rand, first bool) {
	all := append(append([]string(nil), chaosStatic...), chaosRegistered...)
	name := all[r.IntN(len(all))]
	var op string
	var err error
	switch k := r.IntN(12); {
	case !first || k < 4:
		op, err = c.queueOperation(r, subID(name))
	case k < 6:
		op = "answer"
		c.rcv.answerFor(name).Store(int32(r.IntN(answerKinds)))
	case k == 6:
		op = c.refuseWrites(r)
	case k == 7 && r.IntN(3) == 0: // a restart takes a while: fewer of them
		graceful := !c.hard || r.IntN(2) == 0
		op = map[bool]string{false: "restart", true: "graceful restart"}[graceful]
		if err := c.restart(graceful); err != nil {
			c.t.Errorf("%s: %v", op, err) // the engine may be unusable: stop here
			return
		}
	default:
		op, err = c.subscriptionChange(name, k <= 8)
	}
	if !allowed(err) {
		c.t.Errorf("%s %s: %v", op, name, err)
	}
	if err != nil {
		op += " refused"
	}
	c.opsMu.Lock()
	c.ops[op]++
	c.opsMu.Unlock()
}

func (c *chaos) queueOperation(r *rand.Rand, id string) (op string, err error) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	switch r.IntN(5) {
	case 0:
		return "enable", c.e.Enable(id)
	case 3:
		_, err = c.e.store.sweepPayloads()
		return "sweep payloads", err
	case 1:
		_, err = c.e.Redeliver(id)
		return "redeliver", err
	case 2:
		_, err = c.e.RetryNow(context.Background(), id)
		return "retry", err
	}
	_, err = c.e.Discard(id)
	return "discard", err
}

// subscriptionChange moves the subscription to another URL, or removes
// it, or adds it again.
func (c *chaos) subscriptionChange(name string, move bool) (op string, err error) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	present := c.static[name] || c.registered[name]
	switch {
	case move:
		c.version[name]++
		if present {
			err = c.put(name)
		}
		return "move", err
	case present:
		return "remove", c.remove(name)
	}
	return "add", c.put(name)
}

// put adds or changes a subscription: a registration, or a reload with
// it in the config. What the test knows of it changes only if it took.
func (c *chaos) put(name string) error {
	if strings.HasPrefix(name, "r") {
		err := c.e.PutSubscription(c.registration(name))
		c.registered[name] = c.registered[name] || err == nil
		return err
	}
	c.static[name] = true
	return c.e.Configure(c.config())
}

func (c *chaos) remove(name string) error {
	if strings.HasPrefix(name, "r") {
		err := c.e.DeleteSubscription(subID(name))
		c.registered[name] = c.registered[name] && err != nil
		return err
	}
	c.static[name] = false
	return c.e.Configure(c.config())
}

// acked is a publish answered without an error.
type acked struct {
	id, tenant string
	deliveries int
}

// Publishers, receivers changing their answers, operators enabling,
// redelivering, retrying and discarding, subscriptions moved, removed and
// added again, reloads, restarts and a store that refuses writes for a
// moment, all at once on the wall clock. Once all of it stops and every
// receiver takes what it gets, the operator enables, redelivers and
// retries until nothing is left, and then: every acknowledged message
// reached every subscription it was stored for, every delivery is
// recorded as delivered, and the queue depth the engine keeps agrees with
// the store, also after one more restart. "graceful" restarts only
// gracefully and lets the store refuse new data but not fail a write:
// then no delivery may reach its receiver twice, unless the engine never
// heard the receiver's answer (the attempt timed out as the receiver
// answered, a stall of a second on a busy machine). "hard" also kills
// attempts in flight and fails writes, outcomes included. Longer runs:
// go test ./delivery -run OperationsUnderChaos -chaos 1m (flags after the
// package go to the test)
func TestOperationsUnderChaos(t *testing.T) {
	t.Run("graceful", func(t *testing.T) { runChaos(t, false) })
	t.Run("hard", func(t *testing.T) { runChaos(t, true) })
}

func runChaos(t *testing.T, hard bool) {
	// Far above a slow answer (50 ms at most), so that no attempt the
	// receiver takes times out, even on a busy machine.
	const timeout = time.Second
	c := &chaos{
		t: t, dir: t.TempDir(), rcv: newChaosReceiver(t, timeout), hard: hard,
		cfg: Config{
			Workers: 8, EndpointConcurrency: 3, Timeout: timeout,
			Retry:               []time.Duration{5 * time.Millisecond, 10 * time.Millisecond, 20 * time.Millisecond},
			DisableAfter:        200 * time.Millisecond,
			AllowPrivateTargets: true,
		},
		static: map[string]bool{}, registered: map[string]bool{}, version: map[string]int{}, ops: map[string]int{},
	}
	for _, name := range chaosStatic {
		c.static[name] = true
	}
	if err := c.open(); err != nil {
		t.Fatal(err)
	}
	for _, name := range chaosRegistered {
		if err := c.put(name); err != nil {
			t.Fatal(err)
		}
	}
	defer func() { c.close(false) }()

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	var published []acked
	for p := range 3 {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				case <-time.After(2 * time.Millisecond):
				}
				m := msg("x", string(chaosData(i)))
				m.ID = fmt.Sprintf("p%d-%d", p, i)
				if i%2 == 1 {
					m.Tenant = "t" // for the registered subscriptions; the static ones take the others
				}
				c.mu.RLock()
				res, err := c.e.Publish(m)
				c.mu.RUnlock()
				if err != nil {
					if !allowed(err) {
						t.Errorf("publish %s: %v", m.ID, err)
					}
					continue
				}
				mu.Lock()
				published = append(published, acked{m.ID, m.Tenant, res.Deliveries})
				mu.Unlock()
			}
		})
	}
	end := time.Now().Add(*chaosFor)
	var operators sync.WaitGroup
	for o := range 2 {
		operators.Go(func() {
			r := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), uint64(o)))
			for time.Now().Before(end) && !t.Failed() {
				c.step(r, o == 0)
				time.Sleep(time.Duration(r.IntN(20)) * time.Millisecond)
			}
		})
	}
	operators.Wait()
	close(stop)
	wg.Wait()
	t.Logf("operations: %v", c.ops)
	eventually(t, "writes allowed again", func() bool { return !c.faulty.Load() && !c.full.Load() })
	if t.Failed() {
		return
	}
	c.settleEverything()
	c.check(published)
}

// settleEverything makes every receiver take what it gets and every
// subscription present and enabled, then redelivers and retries until
// nothing is queued or failed.
func (c *chaos) settleEverything() {
	t := c.t
	for _, name := range append(append([]string(nil), chaosStatic...), chaosRegistered...) {
		c.rcv.answerFor(name).Store(answerOK)
		if !c.static[name] && !c.registered[name] {
			if err := c.put(name); err != nil {
				t.Fatal(err)
			}
		}
	}
	// A round enables, redelivers and retries each subscription once,
	// then lets the queue drain while it does; an attempt that was
	// hanging when the receivers changed their answers may still have
	// failed its last try, for the next round to redeliver.
	for round := 1; ; round++ {
		var failed []string
		for _, name := range append(append([]string(nil), chaosStatic...), chaosRegistered...) {
			id := subID(name)
			if err := c.e.Enable(id); err != nil {
				t.Fatal(err)
			}
			if _, err := c.e.Redeliver(id); err != nil {
				t.Fatal(err)
			}
			if _, err := c.e.RetryNow(context.Background(), id); err != nil {
				t.Fatal(err)
			}
		}
		queued := storedQueue(t, c.e.store)
		for lastChange := time.Now(); queued > 0 && time.Since(lastChange) < 5*time.Second; {
			time.Sleep(50 * time.Millisecond)
			if n := storedQueue(t, c.e.store); n != queued {
				queued, lastChange = n, time.Now()
			}
		}
		for _, name := range append(append([]string(nil), chaosStatic...), chaosRegistered...) {
			f, err := c.e.store.FailedDeliveries(subID(name), 1)
			if err != nil {
				t.Fatal(err)
			}
			if len(f) > 0 {
				failed = append(failed, name)
			}
		}
		if queued == 0 && len(failed) == 0 {
			eventually(t, "the last attempts settled", func() bool { return c.e.AttemptsInFlight() == 0 })
			return
		}
		if queued > 0 || round == 3 {
			c.describe()
			t.Fatalf("round %d: %d still queued (engine counts %d), failed deliveries for %v", round, queued, c.e.QueueDepth(), failed)
		}
	}
}

// describe logs the state of every subscription's queue.
func (c *chaos) describe() {
	e := c.e
	for _, name := range append(append([]string(nil), chaosStatic...), chaosRegistered...) {
		id := subID(name)
		depth, _ := e.store.QueueDepth(id)
		next, _, _ := e.store.NextDue(id)
		h, _ := e.Health(id)
		_, present := e.subscription(id)
		e.mu.Lock()
		l := e.lanes[id]
		var lane string
		if l != nil {
			lane = fmt.Sprintf("running=%v kicked=%v cursor=%v rewind=%v/%v inflight=%d exhausted=%v next=%v",
				l.running, l.kicked, l.cursor.Format(time.StampMicro), l.rewind, l.rewindTo.Format(time.StampMicro), len(l.inflight), l.exhausted, l.next.Format(time.StampMicro))
		}
		held := e.held[id]
		e.mu.Unlock()
		c.t.Logf("%s: present=%v stored=%d next due %v health %+v held=%v lane: %s", name, present, depth, next.Format(time.StampMicro), h, held, lane)
	}
	e.mu.Lock()
	c.t.Logf("active lanes %d, waiting %d, now %v", e.activeLanes, len(e.waitingLanes), time.Now().Format(time.StampMicro))
	e.mu.Unlock()
}

// resends tells why deliveries were taken more than once. It reads a
// subscription's attempts once, when first asked about it.
type resends struct {
	c        *chaos
	attempts map[string]map[string][]Attempt // subscription -> delivery -> by start
	// unheard: deliveries sent again only because the engine never heard
	// the receiver take them; unexplained: the others.
	unheard, unexplained int
}

func (rs *resends) of(d Delivery) []Attempt {
	byDelivery, ok := rs.attempts[d.SubscriptionID]
	if !ok {
		all, err := rs.c.e.RecentAttempts(d.SubscriptionID, 0)
		if err != nil {
			rs.c.t.Fatal(err)
		}
		byDelivery = map[string][]Attempt{}
		for _, a := range all {
			byDelivery[a.DeliveryID] = append(byDelivery[a.DeliveryID], a)
		}
		for _, as := range byDelivery {
			slices.SortFunc(as, func(a, b Attempt) int { return attemptStart(a).Compare(attemptStart(b)) })
		}
		rs.attempts[d.SubscriptionID] = byDelivery
	}
	return byDelivery[d.ID]
}

// attemptStart is when an attempt began: its record has when it ended.
func attemptStart(a Attempt) time.Time { return a.At.Add(-a.Duration) }

// add counts a delivery taken more than once: unheard if every take but
// the last was carried by an attempt recorded as timed out (the latest
// attempt to start before the request came), so that the engine had to
// send it again; unexplained, and logged, otherwise.
func (rs *resends) add(name string, d Delivery) {
	rs.c.rcv.mu.Lock()
	takes := slices.Clone(rs.c.rcv.takenAt[name+" "+d.Message.ID])
	rs.c.rcv.mu.Unlock()
	slices.SortFunc(takes, func(a, b take) int { return a.at.Compare(b.at) })
	attempts := rs.of(d)
	unheard := true
	for _, tk := range takes[:len(takes)-1] {
		i := sort.Search(len(attempts), func(i int) bool { return attemptStart(attempts[i]).After(tk.at) }) - 1
		if i < 0 || attempts[i].Success || attempts[i].Error != "timed out" {
			unheard = false
		}
	}
	if unheard {
		rs.unheard++
		return
	}
	if rs.unexplained++; rs.unexplained > 5 {
		return
	}
	var lines []string
	for _, a := range attempts {
		lines = append(lines, fmt.Sprintf("#%d from %s: %d %q after %v", a.N, attemptStart(a).Format("15:04:05.000000"), a.Status, a.Error, a.Duration))
	}
	rs.c.t.Logf("%s to %s taken at %v; its recorded attempts: %v", d.Message.ID, name, takes, lines)
}

func (c *chaos) check(published []acked) {
	t := c.t
	if n := c.e.QueueDepth(); n != 0 {
		t.Errorf("the engine counts %d queued with the store empty", n)
	}
	depths, err := c.e.store.QueueDepths()
	if err != nil || len(depths) != 0 {
		t.Errorf("queue depths by subscription: %v, %v", depths, err)
	}
	twice := &resends{c: c, attempts: map[string]map[string][]Attempt{}}
	for _, p := range published {
		names := chaosStatic
		if p.tenant == "t" {
			names = chaosRegistered
		}
		stored := 0
		for _, name := range names {
			d, ok, err := c.e.store.Delivery(deliveryID(p.id, subID(name)))
			if err != nil {
				t.Fatal(err)
			}
			if !ok {
				continue // the subscription was not there when it was published
			}
			stored++
			took := c.rcv.took(name, p.id)
			if d.State != StateDelivered || took == 0 {
				t.Errorf("%s to %s: %s after %d attempts, taken %d times", p.id, name, d.State, d.Attempts, took)
			}
			if took > 1 {
				twice.add(name, d)
			}
		}
		if stored != p.deliveries {
			t.Errorf("%s: published with %d deliveries, %d stored", p.id, p.deliveries, stored)
		}
	}
	t.Logf("%d messages acknowledged, %d requests to the receivers; %d deliveries taken more than once, %d of them after an attempt that timed out as the receiver took it",
		len(published), c.rcv.requests(), twice.unheard+twice.unexplained, twice.unheard)
	if len(c.rcv.wrong) > 0 {
		t.Errorf("%d deliveries came with another payload than published or were never published, the first %s", len(c.rcv.wrong), c.rcv.wrong[0])
	}
	if twice.unexplained > 0 && !c.hard {
		t.Errorf("%d deliveries taken more than once with no attempt cut short, timed out or failed to be recorded", twice.unexplained)
	}
	// The count a start makes from the store agrees.
	if err := c.restart(true); err != nil {
		t.Fatal(err)
	}
	if n := c.e.QueueDepth(); n != 0 {
		t.Errorf("after a restart the engine counts %d queued", n)
	}
}
