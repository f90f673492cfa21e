package delivery

import (
	"errors"
	"net/http"
	"testing"

	"github.com/hookgate/caddy-webhook/internal/store"
	"github.com/hookgate/caddy-webhook/internal/testclock"
)

// Start counts the queue from a snapshot while publishes go on (a restart
// under load, a million queued: half a second). A publish committed after
// the snapshot must be counted once, by its own difference; and a Start
// whose count failed must be able to start the engine later.
func TestQueueCountSeededWhilePublishing(t *testing.T) {
	gate := make(chan struct{})
	rcv := newReceiver(t, func(_ int, w http.ResponseWriter) {
		<-gate
		w.WriteHeader(http.StatusNoContent)
	})
	db, err := store.Open(t.TempDir(), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	e := NewEngine(NewStore(db.DB), nil, testclock.New(t0))
	if err := e.Configure(Config{AllowPrivateTargets: true, Subscriptions: []Subscription{sub("s", rcv.URL)}}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { close(gate); e.Stop(); db.Close() })
	publish := func(n int) {
		for range n {
			if _, err := e.Publish(msg("x", `{}`)); err != nil {
				t.Fatal(err)
			}
		}
	}
	publish(3) // before Start: in the snapshot

	e.store.counting = func() error { return errors.New("read error") }
	if err := e.Start(); err == nil {
		t.Fatal("Start succeeded although counting the queue failed")
	}
	e.store.counting = func() error {
		publish(2) // after the snapshot: not in it
		return nil
	}
	if err := e.Start(); err != nil {
		t.Fatal(err)
	}
	e.store.counting = nil
	if d := e.QueueDepth(); d != 5 {
		t.Fatalf("queue depth %d after Start, want 5 (3 in the snapshot, 2 published meanwhile)", d)
	}
	eventually(t, "the queue drained", func() bool {
		select {
		case gate <- struct{}{}:
		default:
		}
		return storedQueue(t, e.store) == 0
	})
	eventually(t, "queue depth 0", func() bool { return e.QueueDepth() == 0 })
}
