package ingest

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/hookgate/caddy-webhook/internal/store"
)

func TestBadgerWindowsSurviveReopen(t *testing.T) {
	dir := t.TempDir()
	db, err := store.Open(dir, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ws := NewBadgerWindows(db.DB)
	if _, ok, err := ws.LoadWindow("alice"); ok || err != nil {
		t.Fatalf("fresh store: ok=%v err=%v", ok, err)
	}
	want := Window{LastUsed: t0, NextPushAfter: t0.Add(time.Hour)}
	if err := ws.SaveWindow("alice", want); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}

	db, err = store.Open(dir, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	got, ok, err := NewBadgerWindows(db.DB).LoadWindow("alice")
	if err != nil || !ok || !got.LastUsed.Equal(want.LastUsed) || !got.NextPushAfter.Equal(want.NextPushAfter) {
		t.Fatalf("after reopen: %+v ok=%v err=%v", got, ok, err)
	}
}

// Many clients pushing at once through one Gate on real badger: every
// accepted push ends up stored, none is lost to a write conflict.
func TestBadgerConcurrentClients(t *testing.T) {
	db, err := store.Open(t.TempDir(), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	const n = 50
	cfg := Config{AccessKeys: []string{accessKey}}
	for i := 0; i < n; i++ {
		cfg.Clients = append(cfg.Clients, Client{Name: fmt.Sprint("c", i), Key: fmt.Sprint("key", i), Interval: time.Hour})
	}
	clock := &fakeClock{now: t0}
	ws := NewBadgerWindows(db.DB)
	g, err := NewGate(cfg, ws, NewLeases(), clock)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		for j := 0; j < 4; j++ { // four racing pushes per client
			wg.Add(1)
			go func() {
				defer wg.Done()
				push, ans := g.Admit(pushReq("POST", "Token "+accessKey, fmt.Sprint("key", i), "{}"))
				if ans == nil {
					push.Settle(Upstream{Status: 200})
				}
			}()
		}
	}
	wg.Wait()
	for i := 0; i < n; i++ {
		w, ok, err := ws.LoadWindow(fmt.Sprint("c", i))
		if err != nil || !ok || !w.NextPushAfter.Equal(t0.Add(time.Hour)) {
			t.Fatalf("client %d: %+v ok=%v err=%v", i, w, ok, err)
		}
	}
}
