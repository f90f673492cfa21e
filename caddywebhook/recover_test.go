package caddywebhook

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/hookgate/caddy-webhook/ingest"
)

// A panic in the handler chain below webhook_ingest (here: the upstream
// handler) reaches the client as a 500 envelope and the log as an error
// with a stack, not as a dropped connection.
func TestIngestPanicBecomes500(t *testing.T) {
	s := openedStore(t)
	gate, err := ingest.NewGate(ingest.Config{AccessKeys: []string{"k"}, Clients: []ingest.Client{{Name: "a", Key: "ck"}}},
		storeWindows{s}, s.leases, ingest.SystemClock{})
	if err != nil {
		t.Fatal(err)
	}
	core, logs := observer.New(zapcore.ErrorLevel)
	h := &Ingest{gate: gate, shared: s, logger: zap.New(core)}

	req := httptest.NewRequest("POST", "/", strings.NewReader(`{}`))
	req.Header.Set("Authorization", "Token k")
	req.Header.Set("X-Webhook-Token", "ck")
	rec := httptest.NewRecorder()
	err = h.ServeHTTP(rec, req, caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error {
		panic("bug in the upstream handler")
	}))
	if err != nil || rec.Code != 500 || strings.TrimSpace(rec.Body.String()) != `{"success":false,"error":"internal error"}` {
		t.Fatalf("got %v %d %s", err, rec.Code, rec.Body)
	}
	if logs.Len() != 1 || !strings.Contains(logs.All()[0].Message, "panic") {
		t.Fatalf("logs %+v", logs.All())
	}
	// The lease was given back: the client can push again.
	rec = httptest.NewRecorder()
	req = httptest.NewRequest("POST", "/", strings.NewReader(`{}`))
	req.Header.Set("Authorization", "Token k")
	req.Header.Set("X-Webhook-Token", "ck")
	h.ServeHTTP(rec, req, caddyhttp.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) error {
		w.WriteHeader(204)
		return nil
	}))
	if rec.Code != 200 {
		t.Fatalf("after the panic: %d %s", rec.Code, rec.Body)
	}
}

func TestRecoverPanicShapes(t *testing.T) {
	for _, tc := range []struct {
		body any
		want string
	}{
		{publishPanicBody, `{"error":"internal error"}`},
		{(&API{Dialect: "tiki"}).errorBody("internal error"), `{"error":{"message":"internal error"}}`},
		{(&API{Dialect: "doshii"}).errorBody("internal error"), `{"message":"internal error"}`},
	} {
		rec := httptest.NewRecorder()
		func() (err error) {
			defer recoverPanic(rec, httptest.NewRequest("GET", "/", nil), zap.NewNop(), tc.body, &err)
			panic("bug")
		}()
		if rec.Code != 500 || strings.TrimSpace(rec.Body.String()) != tc.want || rec.Header().Get("Content-Type") != "application/json" {
			t.Errorf("got %d %s", rec.Code, rec.Body)
		}
	}
	// http.ErrAbortHandler passes through.
	defer func() {
		if r := recover(); r != http.ErrAbortHandler {
			t.Fatalf("recovered %v", r)
		}
	}()
	func() (err error) {
		defer recoverPanic(httptest.NewRecorder(), httptest.NewRequest("GET", "/", nil), zap.NewNop(), nil, &err)
		panic(http.ErrAbortHandler)
	}()
}
