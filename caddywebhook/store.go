package caddywebhook

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/hookgate/caddy-webhook/delivery"
	"github.com/hookgate/caddy-webhook/ingest"
	"github.com/hookgate/caddy-webhook/internal/store"
)

// stores holds one database per directory, reference-counted by the apps
// (old and new config during a reload) that use it.
var stores = caddy.NewUsagePool()

// sharedStore is everything that must outlive a single config: the database
// and the in-memory state that has to stay consistent with it.
//
// The database is opened by the first config's Start, not its Provision,
// the way the HTTP app binds its ports in Start: `caddy validate`
// provisions a config too, and it must work while Caddy runs and holds
// badger's lock on the directory (and leave no database behind on a
// machine where none runs yet).
type sharedStore struct {
	dir string
	key []byte
	// keyID fingerprints the encryption key, so that a reload with another
	// key is refused before it can try the open database.
	keyID [32]byte
	// previousKeys are the first config's previous_encryption_keys, for
	// the open to move the data from.
	previousKeys [][]byte
	// syncWrites is the first config's sync_writes: badger fixes it at
	// open, so later configs must agree.
	syncWrites bool
	leases     *ingest.Leases
	// inUse counts the requests using the store (see acquire), which
	// Destruct waits for.
	inUse inFlight

	open   atomic.Pointer[openStore]
	opened chan struct{} // closed once open is set
	gone   chan struct{} // closed once opening failed or the store was destroyed
	goneMu sync.Once

	// running lists the started apps using this store, oldest first; the
	// newest one's settings are the engine's. It lets a config that is
	// rolled back (a failed reload) hand the engine back to the one that
	// stays. mu also serializes opening.
	mu      sync.Mutex
	running []*App
}

// openStore is what exists once the database is open.
type openStore struct {
	db      *store.DB
	windows *ingest.BadgerWindows
	leases  *ingest.Leases // the shared store's
	engine  *delivery.Engine
	// inUse is the shared store's count, for the admin API, which finds
	// the store through current rather than through a handler.
	inUse *inFlight
	// claims are the running config's push windows (see App.configure).
	claims atomic.Pointer[windowClaims]
}

func newSharedStore(dir string, key []byte, keyID [32]byte, syncWrites bool) *sharedStore {
	return &sharedStore{
		dir: dir, key: key, keyID: keyID, syncWrites: syncWrites,
		leases: ingest.NewLeases(),
		opened: make(chan struct{}),
		gone:   make(chan struct{}),
	}
}

// errStoreUnavailable answers a request that came before the database was
// opened and waited in vain: the webhooks app did not start (in time).
var errStoreUnavailable = errors.New("the webhook store is not open")

// storeWait bounds how long a request waits for the database. Caddy starts
// its apps in any order, so the HTTP server may serve before the webhooks
// app has opened it; opening takes well under a second even with a
// million queued deliveries. The bound also keeps a waiting request from
// holding up a shutdown with an unlimited grace period when another app
// fails to start.
// A variable so that a test can shorten it.
var storeWait = 10 * time.Second

// freeSpace reads the free space of the store's filesystem; nil: the
// operating system's. A variable so that a test can stand for a full disk.
var freeSpace func(dir string) (int64, error)

// await returns the open store, waiting for it if need be.
func (s *sharedStore) await(ctx context.Context) (*openStore, error) {
	if o := s.open.Load(); o != nil {
		return o, nil
	}
	t := time.NewTimer(storeWait)
	defer t.Stop()
	select {
	case <-s.opened:
		return s.open.Load(), nil
	case <-s.gone:
	case <-ctx.Done():
	case <-t.C:
	}
	return nil, errStoreUnavailable
}

// acquire is await for a request that uses the store: the request counts
// as using it until it calls release, and closing the store waits for it.
// Once the store is closing it is unavailable.
func (s *sharedStore) acquire(ctx context.Context) (*openStore, error) {
	o, err := s.await(ctx)
	if err != nil {
		return nil, err
	}
	if !s.inUse.enter() {
		return nil, errStoreUnavailable
	}
	return o, nil
}

// release ends a use that acquire began.
func (s *sharedStore) release() { s.inUse.leave() }

// openFor opens the database if no config has yet, and makes a's settings
// the engine's before any request can use it, so that a publish is matched
// against a's subscriptions. s.mu is held.
func (s *sharedStore) openFor(a *App) (*openStore, error) {
	if o := s.open.Load(); o != nil {
		return o, nil
	}
	select {
	case <-s.gone:
		return nil, errStoreUnavailable
	default:
	}
	// The database outlives this config, so it logs through the
	// process-wide logger rather than this config's: its free-space
	// guard as webhooks.store, badger itself as webhooks.store.badger.
	db, err := store.Open(s.dir, store.Options{
		Logger: caddy.Log().Named("webhooks.store"), EncryptionKey: s.key, PreviousKeys: s.previousKeys,
		MinFreeSpace: a.minFreeSpace(), FreeSpace: freeSpace,
		SyncWrites: s.syncWrites,
	})
	if err != nil {
		s.close()
		return nil, err
	}
	queue := delivery.NewStore(db.DB)
	queue.SetWritable(db.Writable)
	o := &openStore{
		db:      db,
		windows: ingest.NewBadgerWindows(db.DB),
		leases:  s.leases,
		engine:  delivery.NewEngine(queue, a.logger, nil),
		inUse:   &s.inUse,
	}
	o.windows.SetWritable(db.Writable)
	if err := a.configure(o); err != nil {
		s.close()
		return nil, errors.Join(err, db.Close())
	}
	s.open.Store(o)
	close(s.opened)
	return o, nil
}

// close wakes every request still waiting for the database.
func (s *sharedStore) close() { s.goneMu.Do(func() { close(s.gone) }) }

// Destruct stops deliveries and closes the database once the last config
// using them is gone.
func (s *sharedStore) Destruct() error {
	s.close()
	o := s.open.Load()
	if o == nil {
		return nil
	}
	current.CompareAndSwap(o, nil)
	s.finishInFlight(o.engine)
	return o.db.Close()
}

// closeWait bounds how long closing the store waits for the requests and
// delivery attempts in flight: as long as a push goes on after its client
// has gone.
const closeWait = defaultClientGoneGrace

// finishInFlight lets the requests using the store end (a push saving its
// window, say) and the delivery attempts in flight end and be recorded,
// both at once and for at most closeWait, saying so when it has to wait
// or gives up. Caddy stops its servers before this, but with a finite
// grace_period it leaves handlers running behind.
func (s *sharedStore) finishInFlight(eng *delivery.Engine) {
	logger := caddy.Log().Named("webhooks.store")
	requests, attempts := s.inUse.n.Load(), eng.AttemptsInFlight()
	if requests > 0 || attempts > 0 {
		logger.Info("waiting for requests and delivery attempts in flight before closing the store",
			zap.Int64("requests", requests), zap.Int64("delivery_attempts", attempts), zap.Duration("at_most", closeWait))
	}
	ctx, cancel := context.WithTimeout(context.Background(), closeWait)
	defer cancel()
	left := make(chan int64, 1)
	go func() { left <- s.inUse.drain(ctx) }()
	eng.Shutdown(ctx) // cancels the attempts still in flight at closeWait
	if n := <-left; n > 0 {
		logger.Warn("closing the store with requests still in flight: a push among them will not save its window",
			zap.Int64("requests", n))
	}
}

// storeWindows is the ingest gate's view of the push windows, which exist
// once the database is open; the handler awaits that before admitting a
// push.
type storeWindows struct{ s *sharedStore }

func (w storeWindows) LoadWindow(client string) (ingest.Window, bool, error) {
	o := w.s.open.Load()
	if o == nil {
		return ingest.Window{}, false, errStoreUnavailable
	}
	return o.windows.LoadWindow(client)
}

func (w storeWindows) Writable() error {
	o := w.s.open.Load()
	if o == nil {
		return errStoreUnavailable
	}
	return o.windows.Writable()
}

func (w storeWindows) SaveWindow(client string, win ingest.Window) error {
	o := w.s.open.Load()
	if o == nil {
		return errStoreUnavailable
	}
	return o.windows.SaveWindow(client, win)
}

// Interface guards
var (
	_ caddy.Destructor   = (*sharedStore)(nil)
	_ ingest.WindowStore = storeWindows{}
)
