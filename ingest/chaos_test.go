package ingest

import (
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hookgate/caddy-webhook/internal/store"
	"github.com/hookgate/caddy-webhook/internal/testclock"
)

var chaosFor = flag.Duration("chaos", 2*time.Second, "how long TestWindowsUnderChaos runs")

// windowsChaos is the state of TestWindowsUnderChaos: gates on a badger
// store that is closed and opened again now and then, as on a restart.
type windowsChaos struct {
	t     *testing.T
	dir   string
	clock *testclock.Clock
	full  atomic.Bool // the store refuses new data

	mu     sync.RWMutex // held for writing while the store restarts
	db     *store.DB
	ws     *BadgerWindows
	leases *Leases
	gate   atomic.Pointer[Gate]
	long   bool // the current gate's interval is chaosLong (operator only)

	events sync.Mutex
	pushes map[string][]time.Time // accepted, by client: their last_used
	opens  map[string][]time.Time // windows opened or forgotten by the operator
}

const (
	chaosClients = 4
	chaosLong    = 10 * time.Minute
	chaosShort   = 6 * time.Minute
)

func chaosClient(i int) (name, key string) {
	return fmt.Sprint("c", i), fmt.Sprint("chaos-client-key-", i)
}

func (c *windowsChaos) open() error {
	db, err := store.Open(c.dir, store.Options{})
	if err != nil {
		return err
	}
	c.db, c.ws, c.leases = db, NewBadgerWindows(db.DB), NewLeases()
	c.ws.SetWritable(func() error {
		if c.full.Load() {
			return errors.New("chaos: store full")
		}
		return nil
	})
	return c.reload()
}

// reload replaces the gate, switching the clients' interval between
// chaosLong and chaosShort, as a config reload does.
func (c *windowsChaos) reload() error {
	c.long = !c.long
	interval := chaosShort
	if c.long {
		interval = chaosLong
	}
	cfg := Config{AccessKeys: []string{accessKey}}
	for i := range chaosClients {
		name, key := chaosClient(i)
		cfg.Clients = append(cfg.Clients, Client{Name: name, Key: key, Interval: interval})
	}
	g, err := NewGate(cfg, c.ws, c.leases, c.clock)
	if err != nil {
		return err
	}
	c.gate.Store(g)
	return nil
}

func (c *windowsChaos) restart() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.db.Close(); err != nil {
		return err
	}
	return c.open()
}

// push makes one push of client i, answered by the upstream with status.
func (c *windowsChaos) push(i, status int) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	_, key := chaosClient(i)
	p, ans := c.gate.Load().Admit(pushReq("POST", "Token "+accessKey, key, "{}"))
	if ans != nil {
		return // outside the window, in flight, or the store is full
	}
	s := p.Settle(Upstream{Status: status})
	if s.Status != 200 {
		return
	}
	if s.Detail != "" {
		c.t.Errorf("push accepted with %q", s.Detail)
	}
	last, err := time.Parse(time.RFC3339, s.Envelope.LastUsed)
	if err != nil {
		c.t.Errorf("last_used %q: %v", s.Envelope.LastUsed, err)
		return
	}
	c.record(c.pushes, p.Client.Name, last)
}

func (c *windowsChaos) record(events map[string][]time.Time, client string, at time.Time) {
	c.events.Lock()
	events[client] = append(events[client], at)
	c.events.Unlock()
}

// operate does one thing an operator, a reload or time would.
func (c *windowsChaos) operate(r *rand.Rand) error {
	name, _ := chaosClient(r.IntN(chaosClients))
	switch r.IntN(10) {
	case 0:
		return c.restart()
	case 1:
		// Pushes in flight finish on the gate they were admitted by, as
		// requests on a reloaded Caddy do.
		return c.reload()
	case 2, 3:
		c.mu.RLock()
		defer c.mu.RUnlock()
		at := c.clock.Now()
		var err error
		if r.IntN(2) == 0 {
			_, _, err = c.leases.OpenNow(c.ws, "", name, at)
		} else {
			_, err = c.leases.Forget(c.ws, "", name)
		}
		if errors.Is(err, ErrPushInFlight) {
			return nil
		}
		c.record(c.opens, name, at.Truncate(time.Second))
		return err
	case 4:
		c.full.Store(true)
		time.AfterFunc(time.Duration(r.IntN(20))*time.Millisecond, func() { c.full.Store(false) })
	default:
		c.clock.Advance(time.Duration(r.IntN(240)) * time.Second)
	}
	return nil
}

// Clients pushing all at once through gates that reloads replace (with
// another interval) and restarts rebuild on the reopened store, while an
// operator opens and forgets windows, the store refuses new data now and
// then and time moves on. No two accepted pushes of a client are closer
// than the shorter interval unless the operator opened its window between
// them, and after a last restart every client's stored window is that of
// its last accepted push (unless the operator forgot it since). Longer
// runs: go test ./ingest -run WindowsUnderChaos -chaos 1m
func TestWindowsUnderChaos(t *testing.T) {
	c := &windowsChaos{
		t: t, dir: t.TempDir(), clock: testclock.New(t0),
		pushes: map[string][]time.Time{}, opens: map[string][]time.Time{},
	}
	if err := c.open(); err != nil {
		t.Fatal(err)
	}
	defer func() { c.db.Close() }()
	end := time.Now().Add(*chaosFor)
	var wg sync.WaitGroup
	for p := range 4 {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), uint64(p)))
			statuses := []int{200, 200, 200, 400, 502}
			for time.Now().Before(end) && !t.Failed() {
				c.push(r.IntN(chaosClients), statuses[r.IntN(len(statuses))])
			}
		})
	}
	wg.Go(func() {
		r := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 99))
		for time.Now().Before(end) && !t.Failed() {
			if err := c.operate(r); err != nil {
				t.Error(err)
				return
			}
			time.Sleep(time.Millisecond)
		}
	})
	wg.Wait()
	if t.Failed() {
		return
	}
	if err := c.restart(); err != nil {
		t.Fatal(err)
	}
	accepted := 0
	for i := range chaosClients {
		name, _ := chaosClient(i)
		pushes, opens := c.pushes[name], c.opens[name]
		accepted += len(pushes)
		slices.SortFunc(pushes, func(a, b time.Time) int { return a.Compare(b) })
		for k := 1; k < len(pushes); k++ {
			a, b := pushes[k-1], pushes[k]
			if b.Sub(a) >= chaosShort {
				continue
			}
			opened := slices.ContainsFunc(opens, func(o time.Time) bool { return !o.Before(a) && !o.After(b) })
			if !opened {
				t.Errorf("%s: pushes accepted at %v and %v, %v apart, with no window opened between", name, a, b, b.Sub(a))
			}
		}
		w, ok, err := c.ws.LoadWindow(WindowID("", name))
		if err != nil {
			t.Fatal(err)
		}
		if len(pushes) == 0 {
			continue
		}
		last := pushes[len(pushes)-1]
		forgotten := slices.ContainsFunc(opens, func(o time.Time) bool { return !o.Before(last) })
		if (!ok || !w.LastUsed.Equal(last)) && !forgotten {
			t.Errorf("%s: last push accepted at %v, stored window %+v (found %v)", name, last, w, ok)
		}
	}
	t.Logf("%d pushes accepted; %d clients", accepted, chaosClients)
	if accepted == 0 {
		t.Fatal("no push was accepted: the test checked nothing")
	}
}
