package ingest

import (
	"errors"
	"testing"
	"time"

	"github.com/hookgate/caddy-webhook/internal/testclock"
)

// An operator lists the windows of every scope and opens one early; the
// gates, which answer from their leases, let the client in at once.
func TestOperatorListsAndOpensWindows(t *testing.T) {
	ws, leases, clock := openTestWindows(t), NewLeases(), testclock.New(t0)
	gates := map[string]*Gate{}
	for _, scope := range []string{"", "staging"} {
		g, err := NewGate(Config{AccessKeys: []string{accessKey}, Scope: scope, Clients: []Client{
			{Name: "alice", Key: aliceKey, Interval: time.Hour}, {Name: "bob", Key: bobKey, Interval: time.Hour},
		}}, ws, leases, clock)
		if err != nil {
			t.Fatal(err)
		}
		gates[scope] = g
	}
	push := func(scope, key string) *Answer {
		t.Helper()
		p, ans := gates[scope].Admit(pushReq("POST", "Token "+accessKey, key, "{}"))
		if ans != nil {
			return ans
		}
		s := p.Settle(Upstream{Status: 204})
		return &s.Answer
	}
	push("", aliceKey)
	clock.Advance(time.Minute)
	push("staging", aliceKey)

	got, err := ws.Windows()
	if err != nil {
		t.Fatal(err)
	}
	want := []StoredWindow{
		{Client: "alice", Window: Window{LastUsed: t0, NextPushAfter: t0.Add(time.Hour), Interval: time.Hour}},
		{Scope: "staging", Client: "alice", Window: Window{LastUsed: t0.Add(time.Minute), NextPushAfter: t0.Add(61 * time.Minute), Interval: time.Hour}},
	}
	if len(got) != len(want) {
		t.Fatalf("listed %+v, want %+v", got, want)
	}
	for i := range want {
		g, w := got[i], want[i]
		if g.Scope != w.Scope || g.Client != w.Client || !g.LastUsed.Equal(w.LastUsed) || !g.NextPushAfter.Equal(w.NextPushAfter) || g.Interval != w.Interval {
			t.Fatalf("window %d: %+v, want %+v", i, g, w)
		}
	}

	clock.Advance(4 * time.Minute)
	if ans := push("", aliceKey); ans.Status != 400 {
		t.Fatalf("inside the window: %+v", ans)
	}
	opened, ok, err := leases.OpenNow(ws, "", "alice", clock.Now())
	if err != nil || !ok || !opened.NextPushAfter.Equal(clock.Now()) || !opened.LastUsed.Equal(t0) {
		t.Fatalf("opened: %+v ok=%v err=%v", opened, ok, err)
	}
	if stored, _, _ := ws.LoadWindow("alice"); !stored.NextPushAfter.Equal(clock.Now()) {
		t.Fatalf("opening was not stored: %+v", stored)
	}
	if ans := push("staging", aliceKey); ans.Status != 400 {
		t.Fatalf("opening alice's default-scope window opened staging's: %+v", ans)
	}
	if ans := push("", aliceKey); ans.Status != 200 {
		t.Fatalf("after opening: %+v", ans)
	}

	// Opening an open window changes nothing; a client without a window
	// has nothing to open.
	clock.Advance(2 * time.Hour)
	if w, ok, err := leases.OpenNow(ws, "", "alice", clock.Now()); err != nil || !ok || !w.NextPushAfter.Equal(t0.Add(65*time.Minute)) {
		t.Fatalf("opening an open window: %+v ok=%v err=%v", w, ok, err)
	}
	if _, ok, err := leases.OpenNow(ws, "", "bob", clock.Now()); ok || err != nil {
		t.Fatalf("bob has no window: ok=%v err=%v", ok, err)
	}
	if w, ok, err := leases.Window(ws, "staging", "alice"); err != nil || !ok || !w.LastUsed.Equal(t0.Add(time.Minute)) {
		t.Fatalf("staging's alice: %+v ok=%v err=%v", w, ok, err)
	}

	// While a push of the client is being forwarded, its window is that
	// push's to settle.
	clock.Advance(time.Minute)
	inFlight, ans := gates["staging"].Admit(pushReq("POST", "Token "+accessKey, aliceKey, "{}"))
	if ans != nil {
		t.Fatal(ans)
	}
	if _, _, err := leases.OpenNow(ws, "staging", "alice", clock.Now()); !errors.Is(err, ErrPushInFlight) {
		t.Fatalf("opening during a push: %v", err)
	}
	if _, err := leases.Forget(ws, "staging", "alice"); !errors.Is(err, ErrPushInFlight) {
		t.Fatalf("forgetting during a push: %v", err)
	}
	inFlight.Settle(Upstream{Status: 204})
	if ans := push("staging", aliceKey); ans.Status != 400 {
		t.Fatalf("inside the window the push set: %+v", ans)
	}

	// A forgotten window is gone from the store and from what the gates
	// answer: the client pushes as if for the first time.
	if ok, err := leases.Forget(ws, "staging", "alice"); !ok || err != nil {
		t.Fatalf("forget: ok=%v err=%v", ok, err)
	}
	if _, ok, err := ws.LoadWindow(WindowID("staging", "alice")); ok || err != nil {
		t.Fatalf("forgotten window still stored: ok=%v err=%v", ok, err)
	}
	if ans := push("staging", aliceKey); ans.Status != 200 {
		t.Fatalf("push after forgetting: %+v", ans)
	}
	if ok, err := leases.Forget(ws, "", "bob"); ok || err != nil {
		t.Fatalf("forgetting bob, who has no window: ok=%v err=%v", ok, err)
	}
}
