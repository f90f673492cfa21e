package ingest

import (
	"encoding/binary"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hookgate/caddy-webhook/internal/store"
	"github.com/hookgate/caddy-webhook/internal/testclock"
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
	const n = 50
	cfg := Config{AccessKeys: []string{accessKey}}
	for i := 0; i < n; i++ {
		cfg.Clients = append(cfg.Clients, Client{Name: fmt.Sprint("c", i), Key: fmt.Sprint("key", i), Interval: time.Hour})
	}
	clock := testclock.New(t0)
	ws := openTestWindows(t)
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

func TestWindowRecord(t *testing.T) {
	for _, w := range []Window{
		{LastUsed: t0, NextPushAfter: t0.Add(90 * time.Minute), Interval: 90 * time.Minute},
		{LastUsed: t0, Interval: notByInterval},
		{},
	} {
		var got Window
		if err := decodeWindow(encodeWindow(w), &got); err != nil || !got.LastUsed.Equal(w.LastUsed) ||
			!got.NextPushAfter.Equal(w.NextPushAfter) || got.LastUsed.IsZero() != w.LastUsed.IsZero() || got.Interval != w.Interval {
			t.Fatalf("round trip of %+v: %+v %v", w, got, err)
		}
	}
	// Windows stored by earlier versions, as JSON or without their
	// interval, are still read, and no interval shortens them.
	var legacy Window
	if err := decodeWindow([]byte(`{"last_used":"2026-11-23T10:00:00Z","next_push_after":"2026-11-23T11:00:00Z"}`), &legacy); err != nil ||
		!legacy.LastUsed.Equal(t0) || !legacy.NextPushAfter.Equal(t0.Add(time.Hour)) || legacy.Interval != notByInterval {
		t.Fatalf("JSON window read as %+v, %v", legacy, err)
	}
	v1 := binary.AppendVarint(binary.AppendVarint([]byte{windowV1}, t0.UnixNano()), t0.Add(time.Hour).UnixNano())
	if err := decodeWindow(v1, &legacy); err != nil || !legacy.NextPushAfter.Equal(t0.Add(time.Hour)) || legacy.Interval != notByInterval {
		t.Fatalf("version 1 window read as %+v, %v", legacy, err)
	}
	if got := legacy.Under(0); got != legacy {
		t.Fatalf("interval 0 shortened a window of unknown interval: %+v", got)
	}
	b := encodeWindow(Window{LastUsed: t0, NextPushAfter: t0})
	for n := 0; n < len(b); n++ {
		if err := decodeWindow(b[:n], &legacy); err == nil {
			t.Fatalf("window truncated to %d of %d bytes: no error", n, len(b))
		}
	}
	if err := decodeWindow(append(b, 0), &legacy); err == nil {
		t.Fatal("window with a trailing byte: no error")
	}
}

// A group of saves larger than one badger transaction holds is committed
// in several: every save succeeds and is stored.
func TestGroupCommitLargerThanATransaction(t *testing.T) {
	ws := openTestWindows(t)
	w := Window{LastUsed: t0, NextPushAfter: t0.Add(time.Minute)}
	// Queued as if their pushes had come while another commit ran.
	const n = 30000
	ops := make([]*windowWrite, n)
	for i := range ops {
		ops[i] = &windowWrite{key: fmt.Appendf(nil, "%sclient-%06d-%s", windowPrefix, i, strings.Repeat("n", 40)),
			value: encodeWindow(w)}
	}
	batches := 0
	for queued := ops; len(queued) > 0; batches++ {
		batch := queued[:ws.fitting(queued)]
		queued = queued[len(batch):]
		ws.commitBatch(batch)
	}
	if batches < 2 {
		t.Fatalf("%d saves in %d batch(es): the test needs more than a transaction holds", n, batches)
	}
	for i, op := range ops {
		if op.err != nil {
			t.Fatalf("save %d: %v", i, op.err)
		}
	}
	for _, i := range []int{0, n / 2, n - 1} {
		name := strings.TrimPrefix(string(ops[i].key), windowPrefix)
		if got, ok, err := ws.LoadWindow(name); !ok || err != nil || !got.NextPushAfter.Equal(w.NextPushAfter) {
			t.Fatalf("window %d: %+v ok=%v err=%v", i, got, ok, err)
		}
	}
}

// Times beyond what a stored window holds (Unix nanoseconds, 1677–2262)
// are kept at its ends: an upstream's "never" stays never after a
// restart, and the answer shows what is kept.
func TestFarTimesSurviveRestart(t *testing.T) {
	ws := openTestWindows(t)
	cfg := Config{AccessKeys: []string{accessKey}, Clients: []Client{{Name: "alice", Key: aliceKey}, {Name: "bob", Key: bobKey, Interval: 250 * 365 * 24 * time.Hour}}}
	clock := testclock.New(t0)
	g, err := NewGate(cfg, ws, NewLeases(), clock)
	if err != nil {
		t.Fatal(err)
	}
	push, ans := g.Admit(pushReq("POST", "Token "+accessKey, aliceKey, "{}"))
	if ans != nil {
		t.Fatal(ans)
	}
	h := http.Header{}
	h.Set(HeaderUpstreamNextAfter, "3000-01-01T00:00:00Z")
	h.Set(HeaderUpstreamLastUsed, "1000-01-01T00:00:00Z")
	s := push.Settle(Upstream{Status: 200, Header: h})
	const never, longAgo = "2262-04-11T23:47:16Z", "1677-09-21T00:12:44Z"
	if s.Envelope.NextPushAfter != never || s.Envelope.LastUsed != longAgo {
		t.Fatalf("answered %+v", s.Envelope)
	}
	// Bob's interval of 250 years reaches past 2262 too.
	push, ans = g.Admit(pushReq("POST", "Token "+accessKey, bobKey, "{}"))
	if ans != nil {
		t.Fatal(ans)
	}
	if s := push.Settle(Upstream{Status: 204}); s.Envelope.NextPushAfter != never {
		t.Fatalf("bob answered %+v", s.Envelope)
	}

	// A restart: new leases read the store.
	clock.Advance(24 * time.Hour)
	g, err = NewGate(cfg, ws, NewLeases(), clock)
	if err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{aliceKey, bobKey} {
		_, ans = g.Admit(pushReq("POST", "Token "+accessKey, key, "{}"))
		if ans == nil || ans.Outcome != OutcomeTooEarly || ans.Envelope.NextPushAfter != never {
			t.Fatalf("after the restart: %+v", ans)
		}
	}
	if ans.Envelope.LastUsed == longAgo {
		t.Fatal("bob's last_used is alice's")
	}
}

// openTestWindows is a window store in a badger database of its own,
// closed when the test ends.
func openTestWindows(t *testing.T) *BadgerWindows {
	t.Helper()
	db, err := store.Open(t.TempDir(), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return NewBadgerWindows(db.DB)
}
