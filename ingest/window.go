package ingest

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
	"weak"

	"github.com/dgraph-io/badger/v4"

	"github.com/hookgate/caddy-webhook/internal/store"
)

// Window is a client's push window: the last accepted push and the time
// before which another push is refused.
type Window struct {
	LastUsed      time.Time `json:"last_used"`
	NextPushAfter time.Time `json:"next_push_after"`
	// Interval is the client interval that NextPushAfter was set from, so
	// that a shorter interval configured later shortens the window too.
	// Negative when no interval set it: the upstream or an operator did,
	// or a version that did not record it stored the window.
	Interval time.Duration `json:"-"`
}

// notByInterval marks a window whose NextPushAfter no interval set.
const notByInterval time.Duration = -1

// Open reports whether a push at now falls outside the window.
func (w Window) Open(now time.Time) bool {
	return !now.Before(w.NextPushAfter)
}

// Under returns the window as a client with the given interval sees it. An
// operator who shortens an interval (or turns it off with 0) and reloads
// expects the clients waiting out the old one to be let in by the new one;
// a longer interval waits for the next accepted push, since the client has
// been told when it may push next. Windows that the upstream set stay as
// they are.
func (w Window) Under(interval time.Duration) Window {
	if w.Interval > interval {
		w.NextPushAfter = w.NextPushAfter.Add(interval - w.Interval)
		w.Interval = interval
	}
	return w
}

// WindowStore keeps windows durably, one per client, found by the ID that
// WindowID makes of the client's scope and name.
type WindowStore interface {
	// LoadWindow returns the client's window; ok is false for a client that
	// has never pushed successfully.
	LoadWindow(id string) (w Window, ok bool, err error)
	SaveWindow(id string, w Window) error
	// Writable is nil when a window can be saved now, or says why not
	// (the disk is nearly full). The gate asks before it forwards a push:
	// once the upstream has a push, its window must be saved.
	Writable() error
}

// Clock is the source of the current time.
type Clock interface{ Now() time.Time }

// SystemClock reads the wall clock.
type SystemClock struct{}

// Now returns time.Now().
func (SystemClock) Now() time.Time { return time.Now() }

// Leases makes sure at most one push per client is in flight. A lease is
// held from the window check until the window is settled, so two
// concurrent pushes can never both pass the same open window. A Leases
// belongs to one WindowStore (its leases keep that store's windows) and
// must be shared by every handler that uses the store.
type Leases struct {
	mu sync.Mutex
	// Weak, so that the table holds the leases of the clients that the
	// gates still alive know of, not of every client of every config
	// loaded since Caddy started.
	leases map[string]weak.Pointer[Lease]
}

// NewLeases returns an empty lease table.
func NewLeases() *Leases { return &Leases{leases: make(map[string]weak.Pointer[Lease])} }

// For returns the lease of a window: the same one for as long as anyone
// holds it. A Gate looks its clients' leases up once, when it is built,
// so that a push takes and gives back its lease without a lock or a map.
func (l *Leases) For(window string) *Lease {
	l.mu.Lock()
	defer l.mu.Unlock()
	if lease := l.leases[window].Value(); lease != nil {
		return lease
	}
	lease := &Lease{window: window}
	l.leases[window] = weak.Make(lease)
	runtime.AddCleanup(lease, l.forget, window)
	return lease
}

// forget drops the entry of a window whose lease nobody holds any more,
// unless a new lease has taken its place since.
func (l *Leases) forget(window string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.leases[window].Value() == nil {
		delete(l.leases, window)
	}
}

// Lease is one window's lease, and the window itself as last loaded or
// saved: the store is written through the lease's holder only (badger
// lets one process open a database), so the copy cannot go stale, and a
// push costs one write and no read. It lives as long as the lease.
type Lease struct {
	taken  atomic.Bool
	window string

	mu     sync.Mutex
	loaded bool // w and known hold the stored window
	w      Window
	known  bool
}

// load returns the window, reading the store only the first time.
func (l *Lease) load(ws WindowStore) (w Window, known bool, err error) {
	l.mu.Lock()
	w, known, loaded := l.w, l.known, l.loaded
	l.mu.Unlock()
	if loaded {
		return w, known, nil
	}
	if w, known, err = ws.LoadWindow(l.window); err != nil {
		return w, known, err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.loaded { // else a save came first, and is newer
		l.w, l.known, l.loaded = w, known, true
	}
	return l.w, l.known, nil
}

// save stores the window and keeps it.
func (l *Lease) save(ws WindowStore, w Window) error {
	if err := ws.SaveWindow(l.window, w); err != nil {
		return err
	}
	l.mu.Lock()
	l.w, l.known, l.loaded = w, true, true
	l.mu.Unlock()
	return nil
}

// TryAcquire takes the lease, or reports false if it is taken. The holder
// gives it back with Release, exactly once.
func (l *Lease) TryAcquire() bool { return l.taken.CompareAndSwap(false, true) }

// Release gives back a lease taken with TryAcquire.
func (l *Lease) Release() { l.taken.Store(false) }

// A stored window is a version byte, the two times as Unix nanoseconds
// and the interval in nanoseconds (varints): written on every accepted
// push, it is kept small. Windows stored by earlier versions, as JSON
// (starting with '{') or without the interval (version 1), are still read.
const (
	windowV1 = 1
	windowV2 = 2
)

func encodeWindow(w Window) []byte {
	return appendWindow(make([]byte, 0, 1+3*binary.MaxVarintLen64), w)
}

func appendWindow(b []byte, w Window) []byte {
	b = append(b, windowV2)
	b = binary.AppendVarint(b, unixNano(w.LastUsed))
	b = binary.AppendVarint(b, unixNano(w.NextPushAfter))
	return binary.AppendVarint(b, int64(w.Interval))
}

// Stored windows hold Unix nanoseconds, which reach from 1677 to 2262;
// the ends are whole seconds, as the times of a window usually are.
var (
	earliestStorable = time.Unix(math.MinInt64/int64(time.Second), 0).UTC()
	latestStorable   = time.Unix(math.MaxInt64/int64(time.Second), 0).UTC()
)

// storable brings t into the range a stored window can hold. An upstream
// that answers Webhook-Next-Push-After: 3000-01-01T00:00:00Z means
// "never"; stored as it is, its nanoseconds would wrap to 1830 and open
// the window at the next restart. The latest storable time (2262) says
// "never" as well, and the answer gives the client what is kept.
func storable(t time.Time) time.Time {
	switch {
	case t.IsZero():
		return t
	case t.Before(earliestStorable):
		return earliestStorable
	case t.After(latestStorable):
		return latestStorable
	}
	return t
}

// unixNano is 0 for the zero time, whose UnixNano is out of range.
func unixNano(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

func fromUnixNano(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n).UTC()
}

func decodeWindow(v []byte, w *Window) error {
	w.Interval = notByInterval
	if len(v) > 0 && v[0] == '{' {
		return json.Unmarshal(v, w)
	}
	if len(v) == 0 || (v[0] != windowV1 && v[0] != windowV2) {
		return errors.New("stored push window of an unknown format")
	}
	fields := 2
	if v[0] == windowV2 {
		fields = 3
	}
	var n [3]int64
	rest := v[1:]
	for i := range fields {
		x, size := binary.Varint(rest)
		if size <= 0 {
			return errors.New("truncated push window")
		}
		n[i], rest = x, rest[size:]
	}
	if len(rest) != 0 {
		return errors.New("malformed push window")
	}
	w.LastUsed, w.NextPushAfter = fromUnixNano(n[0]), fromUnixNano(n[1])
	if fields == 3 {
		w.Interval = max(time.Duration(n[2]), notByInterval)
	}
	return nil
}

// windowPrefix namespaces this package's keys in the shared database.
const windowPrefix = "ingest/window/"

// BadgerWindows is a WindowStore in a badger database. Gates keep the
// windows they have loaded or saved (see Lease), so it is read once per
// client.
type BadgerWindows struct {
	db *badger.DB

	// Saves share transactions (group commit).
	saves      store.Batcher[*windowWrite]
	maxTxnSize int64 // what one group commit may write

	writable func() error // see SetWritable
}

// A windowWrite is one save waiting for its group commit. They are
// pooled: a push would otherwise allocate its key, value and channel.
type windowWrite struct {
	store.Turn
	key, value []byte
	err        error
}

var windowWrites = sync.Pool{New: func() any { return new(windowWrite) }}

// NewBadgerWindows stores windows in db under the "ingest/window/" prefix.
func NewBadgerWindows(db *badger.DB) *BadgerWindows {
	// Badger refuses a transaction of 15% of a memtable; stay at half that.
	return &BadgerWindows{db: db, maxTxnSize: db.Opts().MemTableSize * 15 / 100 / 2}
}

// SetWritable makes Writable ask f (Caddy passes the database's
// low-disk-space guard); without it windows are always writable.
func (s *BadgerWindows) SetWritable(f func() error) { s.writable = f }

// Writable implements WindowStore.
func (s *BadgerWindows) Writable() error {
	if s.writable == nil {
		return nil
	}
	return s.writable()
}

// LoadWindow implements WindowStore.
func (s *BadgerWindows) LoadWindow(client string) (Window, bool, error) {
	var w Window
	err := s.db.View(func(txn *badger.Txn) error {
		item, err := txn.Get([]byte(windowPrefix + client))
		if err != nil {
			return err
		}
		return item.Value(func(v []byte) error { return decodeWindow(v, &w) })
	})
	if errors.Is(err, badger.ErrKeyNotFound) {
		return Window{}, false, nil
	}
	if err != nil {
		return Window{}, false, fmt.Errorf("loading push window: %w", err)
	}
	return w, true, nil
}

// SaveWindow implements WindowStore.
func (s *BadgerWindows) SaveWindow(client string, w Window) error {
	op := windowWrites.Get().(*windowWrite)
	op.key = append(append(op.key[:0], windowPrefix...), client...)
	op.value = appendWindow(op.value[:0], w)
	err := s.commit(op)
	windowWrites.Put(op) // badger is done with key and value once committed
	if err != nil {
		return fmt.Errorf("saving push window: %w", err)
	}
	return nil
}

// fitting is how many of the queued saves, from the front, one
// transaction takes: a burst of pushes larger than badger allows in one
// (15% of a memtable, some 20,000 short client names) would otherwise fail
// every save in it.
func (s *BadgerWindows) fitting(queued []*windowWrite) int {
	var size int64
	for i, w := range queued {
		size += int64(len(w.key)+len(w.value)) + 32 // badger's per-entry overhead, generously
		if size > s.maxTxnSize && i > 0 {
			return i
		}
	}
	return len(queued)
}

// commit stores one window, durably, sharing transactions with concurrent
// saves.
func (s *BadgerWindows) commit(op *windowWrite) error {
	s.saves.Do(op, s.fitting, s.commitBatch)
	return op.err
}

func (s *BadgerWindows) commitBatch(batch []*windowWrite) {
	err := store.Update(s.db, func(txn *badger.Txn) error {
		for _, w := range batch {
			if err := txn.Set(w.key, w.value); err != nil {
				return err
			}
		}
		return nil
	})
	for _, w := range batch {
		w.err = err
	}
}
