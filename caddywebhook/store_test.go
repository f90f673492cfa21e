package caddywebhook

import (
	"context"
	"crypto/sha256"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/hookgate/caddy-webhook/delivery/api"
	"github.com/hookgate/caddy-webhook/ingest"
)

// openedStore is a shared store opened as the first config's Start opens
// it, in a temporary directory.
func openedStore(t testing.TB) *sharedStore {
	t.Helper()
	s := newSharedStore(t.TempDir(), nil, sha256.Sum256(nil), false)
	t.Cleanup(func() { s.Destruct() })
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, err := s.openFor(&App{logger: zap.NewNop()}); err != nil {
		t.Fatal(err)
	}
	return s
}

// A request that comes before the webhooks app has opened the store (Caddy
// starts its apps in any order) waits for it.
func TestRequestWaitsForTheStoreToOpen(t *testing.T) {
	s := newSharedStore(t.TempDir(), nil, sha256.Sum256(nil), false)
	t.Cleanup(func() { s.Destruct() })
	got := make(chan *openStore)
	go func() {
		o, err := s.await(context.Background())
		if err != nil {
			t.Error(err)
		}
		got <- o
	}()
	s.mu.Lock()
	o, err := s.openFor(&App{logger: zap.NewNop()})
	s.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	if w := <-got; w != o {
		t.Fatalf("the waiting request got %p, want the opened store %p", w, o)
	}
}

// A request gives up waiting for a store that no app opens: another app
// may have failed to start, and the HTTP server's shutdown waits for it.
func TestRequestStopsWaitingForAStoreNeverOpened(t *testing.T) {
	defer func(d time.Duration) { storeWait = d }(storeWait)
	storeWait = time.Millisecond
	s := newSharedStore(t.TempDir(), nil, sha256.Sum256(nil), false)
	t.Cleanup(func() { s.Destruct() })
	if o, err := s.await(context.Background()); err != errStoreUnavailable || o != nil {
		t.Fatalf("await = %v, %v; want %v", o, err, errStoreUnavailable)
	}
}

// When the database cannot be opened, waiting requests are answered 503
// in each handler's own shape, at once rather than when their wait ends.
func TestHandlersAnswer503WhenTheStoreFailsToOpen(t *testing.T) {
	notADir := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(notADir, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	s := newSharedStore(notADir, nil, sha256.Sum256(nil), false)
	t.Cleanup(func() { s.Destruct() })

	gate, err := ingest.NewGate(ingest.Config{AccessKeys: []string{"k"}, Clients: []ingest.Client{{Name: "a", Key: "ck"}}},
		storeWindows{s}, s.leases, ingest.SystemClock{})
	if err != nil {
		t.Fatal(err)
	}
	handlers := []struct {
		name string
		h    caddyhttp.MiddlewareHandler
		path string
		body string
	}{
		{"ingest", &Ingest{gate: gate, shared: s, logger: zap.NewNop()}, "/", `{"success":false,"error":"service unavailable"}`},
		{"publish", &Publish{shared: s, logger: zap.NewNop(), MaxBody: 1 << 10}, "/", `{"error":"service unavailable"}`},
		{"api", &API{Dialect: api.Tiki, shared: s, logger: zap.NewNop()}, "/v1/webhooks", `{"error":{"message":"service unavailable"}}`},
	}
	answered := make(chan *httptest.ResponseRecorder, len(handlers))
	for _, hc := range handlers {
		go func() {
			req := httptest.NewRequest("POST", hc.path, strings.NewReader(`{"event":"e","data":{}}`))
			req.Header.Set("Authorization", "Token k")
			req.Header.Set("X-Webhook-Token", "ck")
			rec := httptest.NewRecorder()
			if err := hc.h.ServeHTTP(rec, req, caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error {
				t.Errorf("%s: the next handler ran", hc.name)
				return nil
			})); err != nil {
				t.Errorf("%s: %v", hc.name, err)
			}
			answered <- rec
		}()
	}

	s.mu.Lock()
	_, err = s.openFor(&App{logger: zap.NewNop()})
	s.mu.Unlock()
	if err == nil {
		t.Fatal("opening a database in a file succeeded")
	}
	bodies := map[string]bool{}
	for range handlers {
		rec := <-answered
		if rec.Code != 503 || rec.Header().Get("Retry-After") != "1" {
			t.Fatalf("answer %d, Retry-After %q: %s", rec.Code, rec.Header().Get("Retry-After"), rec.Body)
		}
		bodies[strings.TrimSpace(rec.Body.String())] = true
	}
	for _, hc := range handlers {
		if !bodies[hc.body] {
			t.Fatalf("%s: no answer %s among %v", hc.name, hc.body, bodies)
		}
	}
}
