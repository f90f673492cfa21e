package delivery

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4"

	"github.com/hookgate/caddy-webhook/internal/store"
	"github.com/hookgate/caddy-webhook/internal/testclock"
)

type fakeClock = testclock.Clock

var t0 = time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)

// hit is one request a receiver got.
type hit struct {
	Header http.Header
	Body   string
	At     time.Time
}

// receiver is a subscriber endpoint whose answers the test scripts.
type receiver struct {
	*httptest.Server
	mu      sync.Mutex
	hits    []hit
	respond func(n int, w http.ResponseWriter) // n counts from 1
}

func newReceiver(t *testing.T, respond func(n int, w http.ResponseWriter)) *receiver {
	t.Helper()
	r := &receiver{respond: respond}
	r.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, _ := io.ReadAll(req.Body)
		r.mu.Lock()
		r.hits = append(r.hits, hit{Header: req.Header.Clone(), Body: string(body), At: time.Now()})
		n := len(r.hits)
		respond := r.respond
		r.mu.Unlock()
		if respond != nil {
			respond(n, w)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(r.Close)
	return r
}

func (r *receiver) got() []hit {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]hit(nil), r.hits...)
}

// failUntil answers code until up is set, then 204.
func failUntil(up *atomic.Bool, code int) func(int, http.ResponseWriter) {
	return func(_ int, w http.ResponseWriter) {
		if up.Load() {
			w.WriteHeader(http.StatusNoContent)
			return
		}
		w.WriteHeader(code)
	}
}

func status(code int) func(int, http.ResponseWriter) {
	return func(_ int, w http.ResponseWriter) { w.WriteHeader(code) }
}

// testEngine runs an engine on a fresh badger database.
type testEngine struct {
	*Engine
	db    *store.DB
	dir   string
	clock *fakeClock
}

func newTestEngine(t testing.TB, cfg Config) *testEngine {
	t.Helper()
	return openTestEngine(t, t.TempDir(), cfg, testclock.New(t0))
}

func openTestEngine(t testing.TB, dir string, cfg Config, clock *fakeClock) *testEngine {
	t.Helper()
	return startTestEngine(t, dir, cfg, clock, nil)
}

// newGuardedTestEngine is newTestEngine with writable as its store's
// disk-space guard (see Store.SetWritable), set before the engine starts.
func newGuardedTestEngine(t testing.TB, cfg Config, writable func() error) *testEngine {
	t.Helper()
	return startTestEngine(t, t.TempDir(), cfg, testclock.New(t0), writable)
}

func startTestEngine(t testing.TB, dir string, cfg Config, clock *fakeClock, writable func() error) *testEngine {
	t.Helper()
	db, err := store.Open(dir, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	s := NewStore(db.DB)
	if writable != nil {
		s.SetWritable(writable)
	}
	te := &testEngine{Engine: NewEngine(s, nil, clock), db: db, dir: dir, clock: clock}
	cfg.AllowPrivateTargets = true // receivers are on 127.0.0.1
	if err := te.Configure(cfg); err != nil {
		t.Fatal(err)
	}
	if err := te.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(te.close)
	return te
}

// newWallClockEngine runs an engine on the wall clock, for tests where
// timers and real waiting are the point; AllowPrivateTargets is set.
func newWallClockEngine(t *testing.T, cfg Config) *Engine {
	t.Helper()
	db, err := store.Open(t.TempDir(), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	e := NewEngine(NewStore(db.DB), nil, nil)
	cfg.AllowPrivateTargets = true // receivers are on 127.0.0.1
	if err := e.Configure(cfg); err != nil {
		t.Fatal(err)
	}
	if err := e.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Stop(); db.Close() })
	return e
}

func (te *testEngine) close() {
	te.Stop()
	te.db.Close()
}

func sub(name, url string, events ...string) Subscription {
	if len(events) == 0 {
		events = []string{"*"}
	}
	return Subscription{ID: StaticID(name), Name: name, URL: url, Events: events}
}

func msg(event, data string) Message {
	return Message{Event: event, Data: []byte(data)}
}

// manySubscriptions makes n static subscriptions to one unreachable URL,
// for measuring what grows with their number.
func manySubscriptions(n int) []Subscription {
	subs := make([]Subscription, n)
	for i := range subs {
		subs[i] = sub(fmt.Sprintf("s%d", i), "https://example.com/hook")
	}
	return subs
}

// publishTo publishes an empty event to tenant and returns the ID of its
// delivery to subID.
func (te *testEngine) publishTo(t testing.TB, tenant, subID string) string {
	t.Helper()
	m := msg("x", `{}`)
	m.Tenant = tenant
	res, err := te.Publish(m)
	if err != nil {
		t.Fatal(err)
	}
	return deliveryID(res.ID, subID)
}

// eventually polls cond; the deadline is generous because it only bounds
// a failure, never a measurement.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("timed out waiting for %s", what)
}

func (te *testEngine) delivery(t *testing.T, id string) Delivery {
	t.Helper()
	d, ok, err := te.store.Delivery(id)
	if err != nil || !ok {
		t.Fatalf("delivery %s: ok=%v err=%v", id, ok, err)
	}
	return d
}

// storedQueue counts the deliveries pending in the store.
func storedQueue(t *testing.T, s *Store) int64 {
	t.Helper()
	snap := s.db.NewTransaction(false)
	defer snap.Discard()
	n, _, err := s.countQueued(snap)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// refusePublishCommit makes the store refuse the k-th commit of the
// publishes made from now on, as a full disk would. Publishes run on the
// test's goroutine, which alone counts them.
func refusePublishCommit(te *testEngine, k int) {
	commits := 0
	te.store.writeFault = func(op string) error {
		if op == "publish" {
			if commits++; commits == k {
				return errors.New("no space left on device")
			}
		}
		return nil
	}
}

// Delivery finds a delivery where the store keeps it: its record, else its
// queue entry (a queue-only delivery, pending), else its attempts, which
// are all that is left of a queue-only delivery once delivered. One whose
// shared payload is no longer stored (see ReasonPayloadLost) comes
// without it. Only tests look a delivery up by its ID, and the last two
// places are scans.
func (s *Store) Delivery(did string) (Delivery, bool, error) {
	var d Delivery
	var found bool
	err := s.db.View(func(txn *badger.Txn) error {
		var err error
		if found, err = getDelivery(txn, did, &d); err != nil {
			return err
		}
		if !found {
			if found, err = queuedByID(txn, did, &d); !found || err != nil {
				return err
			}
		}
		if err := s.loadPayload(txn, &d); !errors.Is(err, errPayloadGone) {
			return err
		}
		return nil
	})
	if found || err != nil {
		return d, found, err
	}
	return s.deliveredByAttempts(did)
}

// queuedByID finds a pending delivery in its subscription's queue.
func queuedByID(txn *badger.Txn, did string, d *Delivery) (bool, error) {
	_, subID, _ := strings.Cut(did, "|")
	prefix := queuePrefix(subID)
	it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix})
	defer it.Close()
	for it.Rewind(); it.Valid(); it.Next() {
		at, id, ok := parseQueueKey(it.Item().Key(), subID)
		if !ok || id != did {
			continue
		}
		found, err := queuedDelivery(txn, it.Item(), did, d)
		d.NextAttempt = at
		return found, err
	}
	return false, nil
}

// deliveredByAttempts stands a delivered queue-only delivery back up
// from its attempts: found only if the last one succeeded.
func (s *Store) deliveredByAttempts(did string) (Delivery, bool, error) {
	atts, err := s.Attempts(did)
	if err != nil || len(atts) == 0 || !atts[len(atts)-1].Success {
		return Delivery{}, false, err
	}
	last := atts[len(atts)-1]
	return Delivery{
		ID: did, SubscriptionID: last.SubscriptionID,
		Message: Message{ID: last.MessageID, Event: last.Event},
		State:   StateDelivered, Attempts: last.N, LastStatus: last.Status,
		UpdatedAt: last.At, queueOnly: true,
	}, true, nil
}
