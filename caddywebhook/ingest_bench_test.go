package caddywebhook

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"go.uber.org/zap"

	"github.com/hookgate/caddy-webhook/ingest"
)

const benchPush = `{"menu":[{"sku":"A1","name":"Flat white","price":4.5},{"sku":"B2","name":"Croissant","price":3.2}],"updated_at":"2026-11-23T10:00:00Z"}`

const benchClients = 1024

// BenchmarkIngestServeHTTP measures what webhook_ingest adds to a push:
// real badger windows, 1024 clients without a window (so every push
// writes its window), and a next handler that answers 204 at once.
// Compare with BenchmarkNextOnly, the same request without the handler.
func BenchmarkIngestServeHTTP(b *testing.B) {
	s := openedStore(b)
	cfg := ingest.Config{AccessKeys: []string{"bench-access-key"}}
	for i := range benchClients {
		cfg.Clients = append(cfg.Clients, ingest.Client{Name: fmt.Sprint("c", i), Key: fmt.Sprint("key-", i)})
	}
	gate, err := ingest.NewGate(cfg, storeWindows{s}, s.leases, ingest.SystemClock{})
	if err != nil {
		b.Fatal(err)
	}
	h := &Ingest{gate: gate, shared: s, logger: zap.NewNop()}
	benchPushes(b, func(w http.ResponseWriter, r *http.Request) error { return h.ServeHTTP(w, r, noContent{}) })
}

func BenchmarkNextOnly(b *testing.B) {
	benchPushes(b, noContent{}.ServeHTTP)
}

// benchPushes runs serve on pushes from benchClients clients in turn; both
// benchmarks share it so that they differ only in the handler.
func benchPushes(b *testing.B, serve func(http.ResponseWriter, *http.Request) error) {
	var next atomic.Int64
	b.ReportAllocs()
	b.SetParallelism(16)
	b.RunParallel(func(pb *testing.PB) {
		w := httptest.NewRecorder()
		for pb.Next() {
			r := benchRequest(fmt.Sprint("key-", next.Add(1)%benchClients))
			w.Body.Reset()
			clear(w.Header())
			if err := serve(w, r); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func benchRequest(key string) *http.Request {
	r := httptest.NewRequest(http.MethodPost, "/api/v1/webhook", strings.NewReader(benchPush))
	r.Header.Set("Content-Type", "application/json")
	r.Header.Set("Authorization", "Token bench-access-key")
	r.Header.Set("X-Webhook-Token", key)
	return r
}

type noContent struct{}

func (noContent) ServeHTTP(w http.ResponseWriter, r *http.Request) error {
	w.WriteHeader(http.StatusNoContent)
	return nil
}
