package ingest

import (
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"testing"
	"testing/iotest"
	"time"

	"github.com/hookgate/caddy-webhook/internal/testclock"
)

// memWindows is an in-memory WindowStore; it behaves like the badger one
// (see badger_test.go for the real thing) and can be told to fail.
type memWindows struct {
	mu      sync.Mutex
	loads   int
	m       map[string]Window
	failErr error
	full    error // what Writable answers
}

func (s *memWindows) Writable() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.full
}

func newMemWindows() *memWindows { return &memWindows{m: map[string]Window{}} }

func (s *memWindows) LoadWindow(c string) (Window, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.loads++
	if s.failErr != nil {
		return Window{}, false, s.failErr
	}
	w, ok := s.m[c]
	return w, ok, nil
}

func (s *memWindows) SaveWindow(c string, w Window) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.failErr != nil {
		return s.failErr
	}
	s.m[c] = w
	return nil
}

type fakeClock = testclock.Clock

var t0 = time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)

const (
	accessKey = "access-one"
	rotated   = "access-two"
	aliceKey  = "alice-key"
	bobKey    = "bob-key"
)

// leaseOf is the lease of the named client's window.
func (g *Gate) leaseOf(name string) *Lease {
	for _, c := range g.clients {
		if c.Name == name {
			return c.lease
		}
	}
	return nil
}

func newTestGate(t *testing.T, windows WindowStore) (*Gate, *fakeClock) {
	t.Helper()
	clock := testclock.New(t0)
	g, err := NewGate(Config{
		AccessKeys: []string{accessKey, rotated},
		Clients: []Client{
			{Name: "alice", Key: aliceKey, Interval: time.Hour},
			{Name: "bob", Key: bobKey},
		},
		MaxBody: 64,
	}, windows, NewLeases(), clock)
	if err != nil {
		t.Fatal(err)
	}
	return g, clock
}

func pushReq(method, auth, token, body string) *http.Request {
	r := httptest.NewRequest(method, "/api/v1/webhook", strings.NewReader(body))
	if auth != "" {
		r.Header.Set("Authorization", auth)
	}
	if token != "" {
		r.Header.Set(HeaderToken, token)
	}
	return r
}

// brokenOff makes r's body fail after its first byte, as when the client
// goes away while sending it.
func brokenOff(r *http.Request) *http.Request {
	r.Body = io.NopCloser(io.MultiReader(io.LimitReader(r.Body, 1), iotest.ErrReader(io.ErrUnexpectedEOF)))
	return r
}

func TestAdmitRejections(t *testing.T) {
	big := `{"x":"` + strings.Repeat("a", 64) + `"}`
	cases := []struct {
		name    string
		req     *http.Request
		status  int
		msg     string
		outcome Outcome
	}{
		{"GET", pushReq("GET", "Token "+accessKey, aliceKey, ""), 405, MsgMethodNotAllowed, OutcomeMethodNotAllowed},
		{"PUT", pushReq("PUT", "Token "+accessKey, aliceKey, "{}"), 405, MsgMethodNotAllowed, OutcomeMethodNotAllowed},
		{"no authorization", pushReq("POST", "", aliceKey, "{}"), 403, MsgNotAuthorized, OutcomeNotAuthorized},
		{"wrong scheme", pushReq("POST", "Bearer "+accessKey, aliceKey, "{}"), 403, MsgNotAuthorized, OutcomeNotAuthorized},
		{"scheme only", pushReq("POST", "Token", aliceKey, "{}"), 403, MsgNotAuthorized, OutcomeNotAuthorized},
		{"wrong key", pushReq("POST", "Token nope", aliceKey, "{}"), 403, MsgNotAuthorized, OutcomeNotAuthorized},
		{"key prefix", pushReq("POST", "Token access-on", aliceKey, "{}"), 403, MsgNotAuthorized, OutcomeNotAuthorized},
		{"client key as access key", pushReq("POST", "Token "+aliceKey, aliceKey, "{}"), 403, MsgNotAuthorized, OutcomeNotAuthorized},
		{"no token", pushReq("POST", "Token "+accessKey, "", "{}"), 400, MsgMissingToken, OutcomeMissingToken},
		{"blank token", pushReq("POST", "Token "+accessKey, "   ", "{}"), 400, MsgMissingToken, OutcomeMissingToken},
		{"unknown token", pushReq("POST", "Token "+accessKey, "carol-key", "{}"), 403, MsgUnknownToken, OutcomeUnknownToken},
		{"body too large", pushReq("POST", "Token "+accessKey, aliceKey, big), 413, MsgBodyTooLarge, OutcomeBodyTooLarge},
		{"body empty", pushReq("POST", "Token "+accessKey, aliceKey, ""), 400, MsgBodyNotObject, OutcomeBodyNotObject},
		{"body array", pushReq("POST", "Token "+accessKey, aliceKey, "[1]"), 400, MsgBodyNotObject, OutcomeBodyNotObject},
		{"body broken", pushReq("POST", "Token "+accessKey, aliceKey, `{"a":`), 400, MsgBodyNotObject, OutcomeBodyNotObject},
		{"body two objects", pushReq("POST", "Token "+accessKey, aliceKey, `{}{}`), 400, MsgBodyNotObject, OutcomeBodyNotObject},
		{"body broken off", brokenOff(pushReq("POST", "Token "+accessKey, aliceKey, `{"a":1}`)), 400, MsgBodyUnreadable, OutcomeBodyUnreadable},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			g, _ := newTestGate(t, newMemWindows())
			push, ans := g.Admit(tc.req)
			if push != nil || ans == nil {
				t.Fatalf("admitted, want %d", tc.status)
			}
			if ans.Status != tc.status || ans.Envelope.Error != tc.msg || ans.Outcome != tc.outcome || ans.Envelope.Success {
				t.Fatalf("got %d %q %s, want %d %q %s", ans.Status, ans.Envelope.Error, ans.Outcome, tc.status, tc.msg, tc.outcome)
			}
			// A rejected push must leave the lease free.
			lease := g.leaseOf("alice")
			if !lease.TryAcquire() {
				t.Fatal("lease leaked")
			}
			lease.Release()
		})
	}
}

func TestBodyTooLargeWithoutContentLength(t *testing.T) {
	g, _ := newTestGate(t, newMemWindows())
	r := pushReq("POST", "Token "+accessKey, aliceKey, `{"x":"`+strings.Repeat("a", 100)+`"}`)
	r.ContentLength = -1 // chunked: the limit must hold while reading
	_, ans := g.Admit(r)
	if ans == nil || ans.Status != 413 {
		t.Fatalf("got %+v, want 413", ans)
	}
	// Exactly max_body is still fine.
	body := `{"x":"` + strings.Repeat("a", 64-8) + `"}`
	if len(body) != 64 {
		t.Fatalf("body is %d bytes", len(body))
	}
	push, ans := g.Admit(pushReq("POST", "Token "+accessKey, aliceKey, body))
	if ans != nil {
		t.Fatalf("64-byte body refused: %+v", ans)
	}
	push.Release()
}

func TestAcceptedPushConsumesWindow(t *testing.T) {
	windows := newMemWindows()
	g, clock := newTestGate(t, windows)
	for _, key := range []string{accessKey, rotated} {
		clock.Advance(2 * time.Hour)
		push, ans := g.Admit(pushReq("POST", "token  "+key, aliceKey, ` {"menu":[1,2]} `))
		if ans != nil {
			t.Fatalf("refused with key rotation: %+v", ans)
		}
		if string(push.Body) != ` {"menu":[1,2]} ` || push.Client.Name != "alice" {
			t.Fatalf("push = %+v", push)
		}
		s := push.Settle(Upstream{Status: 204, Header: http.Header{}})
		now := clock.Now()
		want := Envelope{Success: true, Error: "", LastUsed: FormatTime(now), NextPushAfter: FormatTime(now.Add(time.Hour))}
		if s.Status != 200 || s.Envelope != want || s.Outcome != OutcomeAccepted {
			t.Fatalf("settled %+v, want 200 %+v", s, want)
		}
		if w := windows.m["alice"]; !w.LastUsed.Equal(now) || !w.NextPushAfter.Equal(now.Add(time.Hour)) {
			t.Fatalf("stored window %+v", w)
		}
	}

	// Within the window: 400 quoting next_push_after.
	clock.Advance(59 * time.Minute)
	_, ans := g.Admit(pushReq("POST", "Token "+accessKey, aliceKey, "{}"))
	next := FormatTime(windows.m["alice"].NextPushAfter)
	if ans == nil || ans.Status != 400 || ans.Envelope.Error != MsgTooEarlyPrefix+next || ans.Envelope.NextPushAfter != next || ans.Envelope.LastUsed == "" {
		t.Fatalf("inside window: %+v", ans)
	}
	// At next_push_after exactly it opens again.
	clock.Advance(time.Minute)
	push, ans := g.Admit(pushReq("POST", "Token "+accessKey, aliceKey, "{}"))
	if ans != nil {
		t.Fatalf("at next_push_after: %+v", ans)
	}
	push.Release()
}

// While a client's key is rotated, its previous keys push as the client:
// the same name, window and lease, and the answer says which kind of key
// was used.
func TestPreviousClientKeys(t *testing.T) {
	clock := testclock.New(t0)
	g, err := NewGate(Config{
		AccessKeys: []string{accessKey},
		Clients:    []Client{{Name: "alice", Key: "alice-new", PreviousKeys: []string{aliceKey, "alice-older"}, Interval: time.Hour}},
	}, newMemWindows(), NewLeases(), clock)
	if err != nil {
		t.Fatal(err)
	}
	for i, tc := range []struct {
		key      string
		previous bool
	}{{"alice-new", false}, {aliceKey, true}, {"alice-older", true}} {
		clock.Advance(time.Hour)
		push, ans := g.Admit(pushReq("POST", "Token "+accessKey, tc.key, "{}"))
		if ans != nil {
			t.Fatalf("key %d refused: %+v", i, ans)
		}
		s := push.Settle(Upstream{Status: 204})
		if s.Status != 200 || s.Client != "alice" || s.PreviousKey != tc.previous {
			t.Fatalf("key %d: %+v, want alice accepted with PreviousKey %v", i, s, tc.previous)
		}
		// One window for all the keys: the next push, by any key, is early.
		_, ans = g.Admit(pushReq("POST", "Token "+accessKey, "alice-new", "{}"))
		if ans == nil || ans.Outcome != OutcomeTooEarly {
			t.Fatalf("after key %d the window is not shared: %+v", i, ans)
		}
	}
	// A lease taken through one key holds off pushes through another.
	clock.Advance(time.Hour)
	push, ans := g.Admit(pushReq("POST", "Token "+accessKey, aliceKey, "{}"))
	if ans != nil {
		t.Fatal(ans)
	}
	if _, ans := g.Admit(pushReq("POST", "Token "+accessKey, "alice-new", "{}")); ans == nil || ans.Outcome != OutcomeInProgress || ans.PreviousKey {
		t.Fatalf("a second push during one by a previous key: %+v", ans)
	}
	push.Release()
	if _, ans := g.Admit(pushReq("POST", "Token "+accessKey, "alice-gone", "{}")); ans == nil || ans.Outcome != OutcomeUnknownToken {
		t.Fatalf("an unknown key: %+v", ans)
	}
}

func TestNoIntervalMeansNoWindow(t *testing.T) {
	g, _ := newTestGate(t, newMemWindows())
	for i := 0; i < 3; i++ {
		push, ans := g.Admit(pushReq("POST", "Token "+accessKey, bobKey, "{}"))
		if ans != nil {
			t.Fatalf("push %d refused: %+v", i, ans)
		}
		s := push.Settle(Upstream{Status: 200})
		if !s.Envelope.Success || s.Envelope.LastUsed != s.Envelope.NextPushAfter {
			t.Fatalf("push %d: %+v", i, s)
		}
	}
}

func TestFailedPushKeepsWindow(t *testing.T) {
	cases := []struct {
		name    string
		up      Upstream
		status  int
		msg     string
		outcome Outcome
	}{
		{"json error", Upstream{Status: 422, Body: []byte(`{"error":"menu has no items"}`)}, 422, "menu has no items", OutcomeUpstreamRejected},
		{"json nested", Upstream{Status: 400, Body: []byte(`{"error":{"message":"bad sku"}}`)}, 400, "bad sku", OutcomeUpstreamRejected},
		{"json message", Upstream{Status: 409, Body: []byte(`{"message":"stale"}`)}, 409, "stale", OutcomeUpstreamRejected},
		{"plain text", Upstream{Status: 400, Header: http.Header{"Content-Type": {"text/plain; charset=utf-8"}}, Body: []byte("price missing\nmore")}, 400, "price missing", OutcomeUpstreamRejected},
		{"html body", Upstream{Status: 404, Header: http.Header{"Content-Type": {"text/html"}}, Body: []byte("<h1>nope</h1>")}, 404, "not found", OutcomeUpstreamRejected},
		{"empty body", Upstream{Status: 401}, 401, "unauthorized", OutcomeUpstreamRejected},
		{"5xx", Upstream{Status: 503, Body: []byte(`{"error":"db down at 10.0.0.7"}`)}, 502, MsgUpstreamPrefix + "upstream answered 503 Service Unavailable", OutcomeUpstreamError},
		{"3xx", Upstream{Status: 302}, 502, MsgUpstreamPrefix + "upstream answered 302 Found", OutcomeUpstreamError},
		{"unreachable", Upstream{Status: 502, Err: errors.New("dial tcp 10.0.0.7:80: connection refused")}, 502, MsgUpstreamPrefix + "no response from upstream", OutcomeUpstreamError},
		{"handler error 4xx", Upstream{Status: 404, Err: errors.New("no route")}, 404, "not found", OutcomeUpstreamRejected},
		{"nothing answered", Upstream{}, 502, MsgUpstreamPrefix + "no response from upstream", OutcomeUpstreamError},
		// A long reason is cut at 300 bytes, never inside a character.
		{"long plain text", Upstream{Status: 400, Header: http.Header{"Content-Type": {"text/plain"}}, Body: []byte("a" + strings.Repeat("é", 200))}, 400, "a" + strings.Repeat("é", 149) + "…", OutcomeUpstreamRejected},
		// So is a JSON one.
		{"long json", Upstream{Status: 422, Body: []byte(`{"error":"a` + strings.Repeat("é", 5000) + `"}`)}, 422, "a" + strings.Repeat("é", 149) + "…", OutcomeUpstreamRejected},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			windows := newMemWindows()
			prev := Window{LastUsed: t0.Add(-2 * time.Hour), NextPushAfter: t0.Add(-time.Hour)}
			windows.m["alice"] = prev
			g, _ := newTestGate(t, windows)
			push, ans := g.Admit(pushReq("POST", "Token "+accessKey, aliceKey, "{}"))
			if ans != nil {
				t.Fatal(ans)
			}
			if tc.up.Header == nil {
				tc.up.Header = http.Header{}
			}
			s := push.Settle(tc.up)
			want := Envelope{Error: tc.msg, LastUsed: FormatTime(prev.LastUsed), NextPushAfter: FormatTime(prev.NextPushAfter)}
			if s.Status != tc.status || s.Envelope != want || s.Outcome != tc.outcome || s.Client != "alice" {
				t.Fatalf("got %d %+v %s, want %d %+v", s.Status, s.Envelope, s.Outcome, tc.status, want)
			}
			if windows.m["alice"] != prev {
				t.Fatal("a failed push moved the window")
			}
			// The client may retry at once.
			push, ans = g.Admit(pushReq("POST", "Token "+accessKey, aliceKey, "{}"))
			if ans != nil {
				t.Fatalf("retry refused: %+v", ans)
			}
			push.Release()
		})
	}
}

func TestUpstreamOverridesWindow(t *testing.T) {
	windows := newMemWindows()
	g, clock := newTestGate(t, windows)
	push, _ := g.Admit(pushReq("POST", "Token "+accessKey, aliceKey, "{}"))
	h := http.Header{}
	h.Set(HeaderUpstreamNextAfter, "2026-11-24T00:00:00+02:00")
	s := push.Settle(Upstream{Status: 200, Header: h})
	if s.Envelope.NextPushAfter != "2026-11-23T22:00:00Z" || s.Envelope.LastUsed != FormatTime(clock.Now()) {
		t.Fatalf("override not applied: %+v", s.Envelope)
	}
	if !windows.m["alice"].NextPushAfter.Equal(time.Date(2026, 11, 23, 22, 0, 0, 0, time.UTC)) {
		t.Fatalf("override not stored: %+v", windows.m["alice"])
	}

	// A malformed value is ignored and reported; the default applies.
	clock.Advance(13 * time.Hour)
	push, ans := g.Admit(pushReq("POST", "Token "+accessKey, aliceKey, "{}"))
	if ans != nil {
		t.Fatal(ans)
	}
	h = http.Header{}
	h.Set(HeaderUpstreamLastUsed, "yesterday")
	s = push.Settle(Upstream{Status: 200, Header: h})
	if s.Detail == "" || s.Envelope.LastUsed != FormatTime(clock.Now()) {
		t.Fatalf("malformed override: %+v", s)
	}

	// A 4xx may move the window too (e.g. "come back tomorrow").
	clock.Advance(2 * time.Hour)
	push, _ = g.Admit(pushReq("POST", "Token "+accessKey, aliceKey, "{}"))
	h = http.Header{}
	h.Set(HeaderUpstreamNextAfter, "2026-11-25T00:00:00Z")
	s = push.Settle(Upstream{Status: 429, Header: h})
	if s.Status != 429 || s.Envelope.NextPushAfter != "2026-11-25T00:00:00Z" {
		t.Fatalf("429 override: %+v", s)
	}
	_, ans = g.Admit(pushReq("POST", "Token "+accessKey, aliceKey, "{}"))
	if ans == nil || ans.Status != 400 || ans.Envelope.Error != MsgTooEarlyPrefix+"2026-11-25T00:00:00Z" {
		t.Fatalf("after 429 override: %+v", ans)
	}
}

// A reload that shortens a client's interval (or turns it off) lets the
// client in by the new interval; one that lengthens it leaves the running
// window alone; a window the upstream set is the upstream's.
func TestChangedIntervalAndRunningWindow(t *testing.T) {
	windows, leases := newMemWindows(), NewLeases()
	clock := testclock.New(t0)
	gateWith := func(interval time.Duration) *Gate {
		t.Helper()
		g, err := NewGate(Config{AccessKeys: []string{accessKey}, Clients: []Client{{Name: "alice", Key: aliceKey, Interval: interval}}},
			windows, leases, clock)
		if err != nil {
			t.Fatal(err)
		}
		return g
	}
	admit := func(g *Gate) *Answer {
		t.Helper()
		push, ans := g.Admit(pushReq("POST", "Token "+accessKey, aliceKey, "{}"))
		if push != nil {
			push.Release()
		}
		return ans
	}
	accept := func(g *Gate, h http.Header) {
		t.Helper()
		push, ans := g.Admit(pushReq("POST", "Token "+accessKey, aliceKey, "{}"))
		if ans != nil {
			t.Fatalf("refused: %+v", ans)
		}
		if s := push.Settle(Upstream{Status: 204, Header: h}); s.Status != 200 {
			t.Fatalf("not accepted: %+v", s)
		}
	}

	accept(gateWith(time.Hour), http.Header{})
	shorter := gateWith(10 * time.Minute)
	clock.Advance(9 * time.Minute)
	ans := admit(shorter)
	want := FormatTime(t0.Add(10 * time.Minute))
	if ans == nil || ans.Status != 400 || ans.Envelope.NextPushAfter != want || ans.Envelope.Error != MsgTooEarlyPrefix+want {
		t.Fatalf("9 minutes in under a 10m interval: %+v, want 400 until %s", ans, want)
	}
	if ans := admit(gateWith(2 * time.Hour)); ans == nil || ans.Envelope.NextPushAfter != FormatTime(t0.Add(time.Hour)) {
		t.Fatalf("a longer interval moved the running window: %+v", ans)
	}
	if ans := admit(gateWith(0)); ans != nil {
		t.Fatalf("interval 0 kept the client out: %+v", ans)
	}
	if w := windows.m["alice"]; !w.NextPushAfter.Equal(t0.Add(time.Hour)) || w.Interval != time.Hour {
		t.Fatalf("admitting changed the stored window: %+v", w)
	}

	clock.Advance(time.Minute)
	h := http.Header{}
	h.Set(HeaderUpstreamNextAfter, FormatTime(clock.Now().Add(3*time.Hour)))
	accept(gateWith(0), h)
	if ans := admit(gateWith(0)); ans == nil || ans.Status != 400 {
		t.Fatalf("interval 0 opened a window the upstream set: %+v", ans)
	}
}

func TestStoreFailures(t *testing.T) {
	windows := newMemWindows()
	g, _ := newTestGate(t, windows)
	windows.failErr = errors.New("disk gone")
	_, ans := g.Admit(pushReq("POST", "Token "+accessKey, aliceKey, "{}"))
	if ans == nil || ans.Status != 500 || ans.Outcome != OutcomeStoreError || strings.Contains(ans.Envelope.Error, "disk") {
		t.Fatalf("load failure: %+v", ans)
	}

	windows.failErr = nil
	push, _ := g.Admit(pushReq("POST", "Token "+accessKey, aliceKey, "{}"))
	windows.failErr = errors.New("disk gone")
	s := push.Settle(Upstream{Status: 200})
	// The upstream has the data: the client hears success, the operator the fault.
	if !s.Envelope.Success || !strings.Contains(s.Detail, "disk gone") {
		t.Fatalf("save failure: %+v", s)
	}

	// A 4xx that moves the window, with a malformed header beside it: the
	// client still gets the upstream's answer, the operator both faults.
	windows.failErr = nil
	push, _ = g.Admit(pushReq("POST", "Token "+accessKey, bobKey, "{}"))
	windows.failErr = errors.New("disk gone")
	h := http.Header{}
	h.Set(HeaderUpstreamNextAfter, "2026-11-25T00:00:00Z")
	h.Set(HeaderUpstreamLastUsed, "yesterday")
	s = push.Settle(Upstream{Status: 429, Header: h})
	if s.Status != 429 || s.Envelope.NextPushAfter != "2026-11-25T00:00:00Z" ||
		s.Detail != `ignoring malformed `+HeaderUpstreamLastUsed+` header "yesterday"; disk gone` {
		t.Fatalf("save failure after a 4xx: %+v", s)
	}
}

func TestConcurrentPushesOneClient(t *testing.T) {
	windows := newMemWindows()
	g, _ := newTestGate(t, windows)
	const n = 64
	var (
		wg        sync.WaitGroup
		start     = make(chan struct{})
		mu        sync.Mutex
		forwarded int
		statuses  = map[int]int{}
	)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			push, ans := g.Admit(pushReq("POST", "Token "+accessKey, aliceKey, "{}"))
			mu.Lock()
			defer mu.Unlock()
			if ans != nil {
				statuses[ans.Status]++
				return
			}
			forwarded++
			mu.Unlock()
			s := push.Settle(Upstream{Status: 200})
			mu.Lock()
			statuses[s.Status]++
		}()
	}
	close(start)
	wg.Wait()
	if forwarded != 1 || statuses[200] != 1 || statuses[400]+statuses[409] != n-1 {
		t.Fatalf("forwarded %d, statuses %v", forwarded, statuses)
	}
	// The winner's window is what is stored.
	if w := windows.m["alice"]; !w.NextPushAfter.Equal(t0.Add(time.Hour)) {
		t.Fatalf("window %+v", w)
	}
}

func TestInProgressAnswer(t *testing.T) {
	g, _ := newTestGate(t, newMemWindows())
	first, ans := g.Admit(pushReq("POST", "Token "+accessKey, aliceKey, "{}"))
	if ans != nil {
		t.Fatal(ans)
	}
	_, ans = g.Admit(pushReq("POST", "Token "+accessKey, aliceKey, "{}"))
	if ans == nil || ans.Status != 409 || ans.Envelope.Error != MsgInProgress || ans.Client != "alice" {
		t.Fatalf("second push: %+v", ans)
	}
	// Another client is not held up.
	other, ans := g.Admit(pushReq("POST", "Token "+accessKey, bobKey, "{}"))
	if ans != nil {
		t.Fatalf("other client: %+v", ans)
	}
	other.Release()
	first.Settle(Upstream{Status: 500})
	again, ans := g.Admit(pushReq("POST", "Token "+accessKey, aliceKey, "{}"))
	if ans != nil {
		t.Fatalf("after a failed push: %+v", ans)
	}
	// The first push's deferred Release (as the handler has) must not free
	// the lease the next push now holds.
	first.Release()
	if _, ans := g.Admit(pushReq("POST", "Token "+accessKey, aliceKey, "{}")); ans == nil || ans.Status != 409 {
		t.Fatalf("a settled push released its successor's lease: %+v", ans)
	}
	again.Release()
}

func TestNewGateRejectsBadConfig(t *testing.T) {
	ok := Client{Name: "a", Key: "k1"}
	cases := []struct {
		name string
		cfg  Config
		want string
	}{
		{"no access key", Config{Clients: []Client{ok}}, "at least one access_key"},
		{"empty access key", Config{AccessKeys: []string{""}, Clients: []Client{ok}}, "access_key #1 is empty"},
		{"no clients", Config{AccessKeys: []string{"x"}}, "at least one client"},
		{"nameless", Config{AccessKeys: []string{"x"}, Clients: []Client{{Key: "k"}}}, "no name"},
		{"empty key", Config{AccessKeys: []string{"x"}, Clients: []Client{{Name: "a"}}}, `client "a" has an empty key`},
		{"dup name", Config{AccessKeys: []string{"x"}, Clients: []Client{ok, {Name: "a", Key: "k2"}}}, `client "a" is defined twice`},
		{"dup key", Config{AccessKeys: []string{"x"}, Clients: []Client{ok, {Name: "b", Key: "k1"}}}, `clients "a" and "b" have the same key`},
		{"client key is the access key", Config{AccessKeys: []string{"x", "k1"}, Clients: []Client{ok}}, `client "a": its key is also an access_key`},
		{"empty previous key", Config{AccessKeys: []string{"x"}, Clients: []Client{{Name: "a", Key: "k1", PreviousKeys: []string{"k0", ""}}}}, `client "a": previous key #2 is empty`},
		{"previous key is the key", Config{AccessKeys: []string{"x"}, Clients: []Client{{Name: "a", Key: "k1", PreviousKeys: []string{"k1"}}}}, `client "a": previous key #1 is given twice`},
		{"previous key is another client's", Config{AccessKeys: []string{"x"}, Clients: []Client{ok, {Name: "b", Key: "k2", PreviousKeys: []string{"k1"}}}}, `clients "a" and "b" have the same key`},
		{"previous key is the access key", Config{AccessKeys: []string{"x", "k1"}, Clients: []Client{{Name: "a", Key: "k2", PreviousKeys: []string{"k1"}}}}, `client "a": previous key #1 is also an access_key`},
		{"negative interval", Config{AccessKeys: []string{"x"}, Clients: []Client{{Name: "a", Key: "k", Interval: -1}}}, "must not be negative"},
		{"negative max body", Config{AccessKeys: []string{"x"}, Clients: []Client{ok}, MaxBody: -1}, "max_body"},
		{"scope not UTF-8", Config{AccessKeys: []string{"x"}, Clients: []Client{ok}, Scope: "caf\xe9"}, "scope must be valid UTF-8"},
		{"access key with a newline", Config{AccessKeys: []string{"k1\n"}, Clients: []Client{ok}}, "access_key #1 begins or ends with whitespace (a trailing newline from a file?)"},
		{"key with a space", Config{AccessKeys: []string{"x"}, Clients: []Client{{Name: "a", Key: " k1"}}}, `client "a": its key begins or ends with whitespace`},
		{"previous key with a control character", Config{AccessKeys: []string{"x"}, Clients: []Client{{Name: "a", Key: "k2", PreviousKeys: []string{"k\x001"}}}}, `client "a": previous key #1 contains control characters`},
		{"name with a newline", Config{AccessKeys: []string{"x"}, Clients: []Client{{Name: "a\nb", Key: "k1"}}}, `client "a\nb": the name is sent upstream as X-Webhook-Client and must not contain control characters`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := NewGate(tc.cfg, newMemWindows(), NewLeases(), SystemClock{})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "k1") {
				t.Fatalf("error quotes a key: %v", err)
			}
		})
	}
}

// Keys refused for surrounding whitespace may still hold whitespace
// inside, and the push's headers may pad them.
func TestKeysWithInnerSpaces(t *testing.T) {
	g, err := NewGate(Config{AccessKeys: []string{"access key"}, Clients: []Client{{Name: "a", Key: "client key"}}},
		newMemWindows(), NewLeases(), SystemClock{})
	if err != nil {
		t.Fatal(err)
	}
	push, ans := g.Admit(pushReq("POST", " Token access key ", " client key\t", "{}"))
	if ans != nil {
		t.Fatalf("refused: %+v", *ans)
	}
	push.Release()
}

func TestForwardHeader(t *testing.T) {
	h := http.Header{}
	h.Set("Authorization", "Token x")
	h.Set(HeaderToken, "y")
	h.Set(HeaderClient, "spoofed")
	h.Set("X-Other", "kept")
	ForwardHeader(h, "alice")
	if h.Get("Authorization") != "" || h.Get(HeaderToken) != "" || h.Get(HeaderClient) != "alice" || h.Get("X-Other") != "kept" || len(h[HeaderClient]) != 1 {
		t.Fatalf("headers %v", h)
	}
}

// Two gates on one store, as two webhook_ingest handlers of one Caddy: a
// client name is one client (one window, one lease) within a scope, and
// scopes keep the windows of same-named clients apart.
func TestScopesSeparateWindows(t *testing.T) {
	windows, leases := newMemWindows(), NewLeases()
	clock := testclock.New(t0)
	gate := func(scope, key string) *Gate {
		g, err := NewGate(Config{
			AccessKeys: []string{accessKey},
			Clients:    []Client{{Name: "acme", Key: key, Interval: time.Hour}},
			Scope:      scope,
		}, windows, leases, clock)
		if err != nil {
			t.Fatal(err)
		}
		return g
	}
	push := func(g *Gate, key string) *Answer {
		p, ans := g.Admit(pushReq("POST", "Token "+accessKey, key, "{}"))
		if ans != nil {
			return ans
		}
		s := p.Settle(Upstream{Status: 204})
		return &s.Answer
	}
	prod, staging, other := gate("", "prod-key"), gate("staging", "staging-key"), gate("", "other-key")

	if a := push(prod, "prod-key"); a.Status != 200 {
		t.Fatalf("first push to prod: %+v", a)
	}
	if a := push(staging, "staging-key"); a.Status != 200 {
		t.Fatalf("staging push after a prod push of the same client name: %+v", a)
	}
	if a := push(other, "other-key"); a.Status != 400 || a.Outcome != OutcomeTooEarly {
		t.Fatalf("same scope, same name: the window must be shared, got %+v", a)
	}
	if _, ok := windows.m["acme"]; !ok {
		t.Fatalf("the default scope must keep the bare name (windows stored by earlier versions): %v", windows.m)
	}
	if _, ok := windows.m[WindowID("staging", "acme")]; !ok || len(windows.m) != 2 {
		t.Fatalf("stored windows: %v", windows.m)
	}

	// The lease follows the window: a push in flight in one scope does
	// not hold up the same name in another.
	clock.Advance(2 * time.Hour)
	p, ans := prod.Admit(pushReq("POST", "Token "+accessKey, "prod-key", "{}"))
	if ans != nil {
		t.Fatal(ans)
	}
	defer p.Release()
	if _, ans := staging.Admit(pushReq("POST", "Token "+accessKey, "staging-key", "{}")); ans != nil {
		t.Fatalf("staging held up by a prod push in flight: %+v", ans)
	}
	if _, ans := other.Admit(pushReq("POST", "Token "+accessKey, "other-key", "{}")); ans == nil || ans.Outcome != OutcomeInProgress {
		t.Fatalf("same scope, same name, push in flight: %+v", ans)
	}
}

func TestWindowIDsDoNotCollide(t *testing.T) {
	pairs := [][2]string{{"", "a"}, {"a", "a"}, {"", "a/b"}, {"a", "b"}, {"a/", "b"}, {"a", "/b"}, {"", "ab"}}
	seen := map[string][2]string{}
	for _, p := range pairs {
		id := WindowID(p[0], p[1])
		if q, dup := seen[id]; dup {
			t.Fatalf("%q and %q share the ID %q", p, q, id)
		}
		seen[id] = p
	}
	// Which is why a NUL is refused where it could make two of them meet.
	for _, cfg := range []Config{
		{AccessKeys: []string{"x"}, Clients: []Client{{Name: "a\x00b", Key: "k"}}},
		{AccessKeys: []string{"x"}, Clients: []Client{{Name: "b", Key: "k"}}, Scope: "a\x00"},
	} {
		if _, err := NewGate(cfg, newMemWindows(), NewLeases(), SystemClock{}); err == nil || !strings.Contains(err.Error(), "NUL") {
			t.Fatalf("%+v: err = %v", cfg, err)
		}
	}
}

// A store that cannot take a window now (low on disk space) refuses the
// push before it is forwarded, with the client's window in the envelope
// and its lease free; a push too early is still told so.
func TestAdmitWhileStoreFull(t *testing.T) {
	windows := newMemWindows()
	g, clock := newTestGate(t, windows)
	push, ans := g.Admit(pushReq("POST", "Token "+accessKey, aliceKey, "{}"))
	if ans != nil {
		t.Fatalf("first push: %+v", ans)
	}
	if s := push.Settle(Upstream{Status: 204}); s.Outcome != OutcomeAccepted {
		t.Fatalf("first push settled %+v", s)
	}
	windows.full = errors.New("only 1 MiB free on /data")

	_, ans = g.Admit(pushReq("POST", "Token "+accessKey, aliceKey, "{}"))
	if ans == nil || ans.Status != 400 || ans.Outcome != OutcomeTooEarly {
		t.Fatalf("too early while full: %+v", ans)
	}
	clock.Advance(2 * time.Hour)
	_, ans = g.Admit(pushReq("POST", "Token "+accessKey, aliceKey, "{}"))
	if ans == nil || ans.Status != 503 || ans.Outcome != OutcomeStoreFull || ans.Client != "alice" ||
		ans.Envelope.Error != MsgUnavailable || ans.Envelope.Success ||
		ans.Envelope.LastUsed != FormatTime(t0) || ans.Envelope.NextPushAfter != FormatTime(t0.Add(time.Hour)) {
		t.Fatalf("while full: %+v", ans)
	}
	if _, ans = g.Admit(pushReq("POST", "Token "+accessKey, bobKey, "{}")); ans == nil || ans.Outcome != OutcomeStoreFull ||
		ans.Envelope.LastUsed != "" || ans.Envelope.NextPushAfter != "" {
		t.Fatalf("a client that never pushed, while full: %+v", ans)
	}

	windows.full = nil
	push, ans = g.Admit(pushReq("POST", "Token "+accessKey, aliceKey, "{}"))
	if ans != nil {
		t.Fatalf("after space came back (is the lease still held?): %+v", ans)
	}
	push.Release()
}

func (l *Leases) len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.leases)
}

// The lease table keeps a window's lease while a gate of a live config
// knows the client, and lets go of it once none does: reloads that rename
// clients must not grow it for as long as Caddy runs.
func TestLeasesFollowTheGatesThatUseThem(t *testing.T) {
	windows, leases := newMemWindows(), NewLeases()
	gate := func(names ...string) *Gate {
		cfg := Config{AccessKeys: []string{accessKey}}
		for _, n := range names {
			cfg.Clients = append(cfg.Clients, Client{Name: n, Key: n + "-key"})
		}
		g, err := NewGate(cfg, windows, leases, SystemClock{})
		if err != nil {
			t.Fatal(err)
		}
		return g
	}
	old, current := gate("alice", "bob"), gate("alice", "carol")
	if n := leases.len(); n != 3 {
		t.Fatalf("%d leases for alice, bob and carol", n)
	}
	if old.leaseOf("alice") != current.leaseOf("alice") {
		t.Fatal("two gates of one scope have different leases for alice")
	}
	aliceInFlight := current.leaseOf("alice")
	if !aliceInFlight.TryAcquire() {
		t.Fatal("alice's lease is taken")
	}

	runtime.KeepAlive(old)
	old = nil // the old config is gone: bob is no one's any more
	deadline := time.Now().Add(10 * time.Second)
	for leases.len() != 2 {
		if time.Now().After(deadline) {
			t.Fatalf("%d leases after the old gate was collected, want alice and carol", leases.len())
		}
		runtime.GC()
		time.Sleep(time.Millisecond)
	}
	// Alice's lease, held by the current gate, is the same one, still
	// taken by the push in flight.
	if leases.For("alice") != aliceInFlight || leases.For("alice").TryAcquire() {
		t.Fatal("alice's lease was replaced while a gate still used it")
	}
	runtime.KeepAlive(current)
}

// A gate reads a client's window from the store once and then keeps what
// it saves, so a push costs one write and no read; a save that fails
// leaves the window as it was.
func TestGateReadsEachWindowOnce(t *testing.T) {
	windows := newMemWindows()
	stored := Window{LastUsed: t0.Add(-30 * time.Minute), NextPushAfter: t0.Add(30 * time.Minute)}
	windows.m["alice"] = stored // by an earlier run
	g, clock := newTestGate(t, windows)
	alice := func() (*Push, *Answer) { return g.Admit(pushReq("POST", "Token "+accessKey, aliceKey, "{}")) }

	if _, ans := alice(); ans == nil || ans.Outcome != OutcomeTooEarly || ans.Envelope.NextPushAfter != FormatTime(stored.NextPushAfter) {
		t.Fatalf("the stored window was not found: %+v", ans)
	}
	for range 3 {
		clock.Advance(2 * time.Hour)
		push, ans := alice()
		if ans != nil {
			t.Fatalf("open window refused: %+v", ans)
		}
		push.Settle(Upstream{Status: 204})
	}
	if windows.loads != 1 {
		t.Fatalf("the store was read %d times for one client", windows.loads)
	}

	clock.Advance(2 * time.Hour)
	push, _ := alice()
	windows.failErr = errors.New("disk gone")
	if s := push.Settle(Upstream{Status: 204}); !strings.Contains(s.Detail, "disk gone") {
		t.Fatalf("save failure not reported: %+v", s)
	}
	windows.failErr = nil
	push, ans := alice()
	if ans != nil {
		t.Fatalf("a window that could not be saved was kept: %+v", ans)
	}
	saved := push.Settle(Upstream{Status: 204})
	if _, ans := alice(); ans == nil || ans.Outcome != OutcomeTooEarly || ans.Envelope.NextPushAfter != saved.Envelope.NextPushAfter {
		t.Fatalf("after a save: %+v", ans)
	}
	if windows.loads != 1 {
		t.Fatalf("the store was read %d times for one client", windows.loads)
	}
}
