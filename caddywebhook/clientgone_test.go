package caddywebhook

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/hookgate/caddy-webhook/ingest"
)

// A client that gives up while a slow backend still takes its push must
// not get a second push through inside its window: the push goes on
// without the client, and the backend's 2xx consumes the window.
func TestIngestOutlastsItsClient(t *testing.T) {
	up, tester, logFile := startIngest(t)

	// The client gives up once the backend has the push, which takes a
	// second more to answer.
	ctx, leave := context.WithCancel(context.Background())
	defer leave()
	up.onArrival = leave
	req, _ := http.NewRequestWithContext(ctx, "POST", testBase+"/api/v1/webhook", strings.NewReader(`{"n":1}`))
	for k, v := range with(authHeaders(e2eAccessKey, e2eAliceKey), "X-Test-Delay", "1s") {
		req.Header.Set(k, v)
	}
	if res, err := tester.Client.Do(req); err == nil {
		res.Body.Close()
		t.Fatalf("the client got %d before it left", res.StatusCode)
	}
	waitFor(t, "the push to be settled", func() bool { return strings.Contains(readFile(t, logFile), `"client_gone":true`) })

	res := doPush(t, tester, "POST", "/api/v1/webhook", authHeaders(e2eAccessKey, e2eAliceKey), `{"n":2}`)
	if res.Status != 400 || !strings.HasPrefix(res.Envelope.Error, "next push not allowed until after") {
		t.Fatalf("the retry: %d %s", res.Status, res.Raw)
	}
	if n := len(up.requests()); n != 1 {
		t.Fatalf("the backend got %d pushes", n)
	}
	var line string
	for _, l := range strings.Split(readFile(t, logFile), "\n") {
		if strings.Contains(l, `"client_gone":true`) {
			line = l
		}
	}
	if !strings.Contains(line, `"outcome":"accepted"`) || !strings.Contains(line, `"level":"info"`) || !strings.Contains(line, `"upstream_status":204`) {
		t.Fatalf("log line of the push: %s", line)
	}
}

// A backend that has not answered the grace after the client left is cut
// off: the push counts as an upstream error, not as a rejection, and the
// window stays open.
func TestIngestGivesUpOnTheUpstreamAfterTheGrace(t *testing.T) {
	s := openedStore(t)
	gate, err := ingest.NewGate(ingest.Config{AccessKeys: []string{"k"}, Clients: []ingest.Client{{Name: "a", Key: "ck", Interval: time.Hour}}},
		storeWindows{s}, s.leases, ingest.SystemClock{})
	if err != nil {
		t.Fatal(err)
	}
	core, logs := observer.New(zapcore.InfoLevel)
	h := &Ingest{gate: gate, shared: s, logger: zap.New(core), clientGoneGrace: time.Millisecond}
	push := func(ctx context.Context, next caddyhttp.HandlerFunc) *httptest.ResponseRecorder {
		req := httptest.NewRequestWithContext(ctx, "POST", "/", strings.NewReader(`{}`))
		req.Header.Set("Authorization", "Token k")
		req.Header.Set("X-Webhook-Token", "ck")
		rec := httptest.NewRecorder()
		if err := h.ServeHTTP(rec, req, next); err != nil {
			t.Fatal(err)
		}
		return rec
	}

	gone, leave := context.WithCancel(context.Background())
	leave()
	rec := push(gone, func(w http.ResponseWriter, r *http.Request) error {
		select {
		case <-r.Context().Done():
			// What reverse_proxy answers to a canceled request.
			return caddyhttp.Error(499, r.Context().Err())
		case <-time.After(20 * time.Second):
			t.Error("the push was never cut off")
			return errors.New("never cut off")
		}
	})
	if rec.Code != http.StatusBadGateway || !strings.Contains(rec.Body.String(), "no response from upstream") {
		t.Fatalf("cut off: %d %s", rec.Code, rec.Body)
	}
	entries := logs.FilterMessage("webhook push").All()
	if len(entries) != 1 || entries[0].ContextMap()["outcome"] != "upstream_error" || entries[0].ContextMap()["client_gone"] != true {
		t.Fatalf("log: %+v", entries)
	}

	// The window stayed open; a client that stays gets its answer as usual.
	rec = push(context.Background(), func(w http.ResponseWriter, r *http.Request) error {
		if r.Context().Err() != nil {
			t.Error("the push of a client that stayed was canceled")
		}
		w.WriteHeader(http.StatusNoContent)
		return nil
	})
	if rec.Code != http.StatusOK {
		t.Fatalf("next push: %d %s", rec.Code, rec.Body)
	}
}
