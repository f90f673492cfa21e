package ingest

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/dgraph-io/badger/v4"

	"github.com/hookgate/caddy-webhook/internal/store"
)

// What an operator may see and do with push windows, outside any push.

// StoredWindow is one client's window as stored.
type StoredWindow struct {
	Scope  string
	Client string
	Window
}

// splitWindowID undoes WindowID.
func splitWindowID(id string) (scope, client string) {
	if scope, client, ok := strings.Cut(id, "\x00"); ok {
		return scope, client
	}
	return "", id
}

// Windows lists every window on record, of every scope, in key order.
// Windows of clients that no config names any more are listed too: they
// stay stored.
func (s *BadgerWindows) Windows() ([]StoredWindow, error) {
	var out []StoredWindow
	err := s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte(windowPrefix), PrefetchValues: true, PrefetchSize: 100})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			item := it.Item()
			sw := StoredWindow{}
			sw.Scope, sw.Client = splitWindowID(strings.TrimPrefix(string(item.Key()), windowPrefix))
			if err := item.Value(func(v []byte) error { return decodeWindow(v, &sw.Window) }); err != nil {
				return fmt.Errorf("push window of %q: %w", sw.Client, err)
			}
			out = append(out, sw)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("listing push windows: %w", err)
	}
	return out, nil
}

// Window returns one client's window; ok is false when it has none on
// record (it has never had a push accepted).
func (l *Leases) Window(ws WindowStore, scope, client string) (w Window, ok bool, err error) {
	return l.For(WindowID(scope, client)).load(ws)
}

// ErrPushInFlight refuses an operator's change to a window while a push of
// its client is being forwarded: that push settles the window itself.
var ErrPushInFlight = errors.New("a push of this client is being forwarded; try again once it is answered")

// OpenNow lets a client push at once: its next_push_after becomes now
// (to the second, as windows are answered), last_used stays. It holds the
// client's lease meanwhile, so that no push settles the window at the
// same time, and saves through it, since the gates answer from its copy.
// ok is false when the client has no window on record, which leaves it
// open.
func (l *Leases) OpenNow(ws WindowStore, scope, client string, now time.Time) (w Window, ok bool, err error) {
	lease := l.For(WindowID(scope, client))
	if !lease.TryAcquire() {
		return w, false, ErrPushInFlight
	}
	defer lease.Release()
	w, ok, err = lease.load(ws)
	if err != nil || !ok {
		return w, ok, err
	}
	now = now.UTC().Truncate(time.Second)
	if w.Open(now) {
		return w, true, nil
	}
	w.NextPushAfter, w.Interval = now, notByInterval
	return w, true, lease.save(ws, w)
}

// Forget deletes a client's window, as if it had never had a push
// accepted: windows of clients that no config names any more stay stored
// otherwise. Like OpenNow it holds the lease, and the lease's copy goes
// with the stored window. ok is false when there was no window on record.
func (l *Leases) Forget(ws *BadgerWindows, scope, client string) (ok bool, err error) {
	lease := l.For(WindowID(scope, client))
	if !lease.TryAcquire() {
		return false, ErrPushInFlight
	}
	defer lease.Release()
	if _, ok, err = lease.load(ws); err != nil || !ok {
		return ok, err
	}
	if err := ws.deleteWindow(lease.window); err != nil {
		return true, err
	}
	lease.mu.Lock()
	lease.w, lease.known, lease.loaded = Window{}, false, true
	lease.mu.Unlock()
	return true, nil
}

func (s *BadgerWindows) deleteWindow(id string) error {
	err := store.Update(s.db, func(txn *badger.Txn) error { return txn.Delete([]byte(windowPrefix + id)) })
	if err != nil {
		return fmt.Errorf("deleting push window: %w", err)
	}
	return nil
}
