package api

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http/httpguts"

	"github.com/hookgate/caddy-webhook/delivery"
	"github.com/hookgate/caddy-webhook/internal/store"
)

// offline is the engine with verification and test sends answered locally:
// fuzzed URLs must never be dialled.
type offline struct{ *delivery.Engine }

func (offline) Probe(*delivery.Subscription, string, []byte) delivery.ProbeResult {
	return delivery.ProbeResult{Status: 204, Success: true, Latency: time.Millisecond}
}

// FuzzAPI sends arbitrary calls to both dialects: no panic, every answer
// is JSON with a sensible status.
func FuzzAPI(f *testing.F) {
	seeds := []struct{ dialect, method, path, body, location string }{
		{Tiki, "POST", "/v1/webhooks", `{"uri":"https://example.com/x","event":"product:request:rejected"}`, ""},
		{Tiki, "PUT", "/v1/webhooks", `{"uri":"/rel","event":"e"}`, ""},
		{Tiki, "DELETE", "/v1/webhooks?event=e", ``, ""},
		{Tiki, "PUT", "/v1/webhooks/credentials", `{"id":"i","secret":"s"}`, ""},
		{Doshii, "POST", "/partner/v3/webhooks", `{"event":"order_created","webhookUrl":"https://example.com/d","authenticationKey":"k","authenticationToken":"t"}`, "loc"},
		{Doshii, "PUT", "/partner/v3/webhooks/order_created", `{"webhookUrl":"https://example.com/2"}`, ""},
		{Doshii, "POST", "/webhooks/order_created/test", ``, ""},
		{Tiki, "GET", "/webhooks/attempts?limit=-1", ``, ""},
		{Doshii, "POST", "/webhooks/e/redeliver", `{`, ""},
		{Doshii, "POST", "/webhooks", `{"event":"e","webhookUrl":"https://example.com/d","authenticationToken":"t\r\nX-Other: 1"}`, ""},
		{Tiki, "PUT", "/v1/webhooks/credentials", `{"id":"a:b","secret":"s\n"}`, ""},
	}
	for _, s := range seeds {
		f.Add(s.dialect == Doshii, s.method, s.path, s.body, s.location)
	}
	db, err := store.Open(f.TempDir(), store.Options{})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { db.Close() })
	e := delivery.NewEngine(delivery.NewStore(db.DB), nil, nil)
	if err := e.Configure(delivery.Config{}); err != nil { // not started: nothing is delivered
		f.Fatal(err)
	}
	handlers := map[bool]*Handler{
		false: {Engine: offline{e}, Dialect: Tiki, Verify: true},
		true:  {Engine: offline{e}, Dialect: Doshii, Verify: true},
	}
	f.Fuzz(func(t *testing.T, doshii bool, method, path, body, location string) {
		// httptest.NewRequest panics on a method that is not an HTTP token,
		// the grammar header names share.
		if !httpguts.ValidHeaderFieldName(method) || !strings.HasPrefix(path, "/") || strings.ContainsAny(path, " \t\r\n#") {
			return
		}
		req, err := http.NewRequest(method, "http://api.example"+path, strings.NewReader(body))
		if err != nil {
			return
		}
		req.Header.Set(HeaderDoshiiLocation, strings.Map(func(r rune) rune {
			if r < 0x20 || r == 0x7f {
				return -1
			}
			return r
		}, location))
		base, tail, ok := SplitPath(req.URL.EscapedPath())
		if !ok {
			return
		}
		rec := httptest.NewRecorder()
		handlers[doshii].ServeHTTP(rec, Request{Request: req, Tenant: "fuzz", Base: base, Tail: tail})
		if rec.Code < 200 || rec.Code >= 600 || rec.Code == 500 || !json.Valid(rec.Body.Bytes()) {
			t.Fatalf("%s %s %q: %d %s", method, path, body, rec.Code, rec.Body)
		}
		// Whatever was stored can be sent: its credentials fit in headers.
		for _, sub := range e.TenantSubscriptions(handlers[doshii].Dialect, "fuzz") {
			a := sub.Auth
			for _, v := range []string{a.Authorization, a.Token, a.Secret, a.BasicUser, a.BasicPassword} {
				if !httpguts.ValidHeaderFieldValue(v) || strings.ContainsAny(v, "\r\n") {
					t.Fatalf("%s %s %q stored a credential no header can carry: %q", method, path, body, v)
				}
			}
			if strings.Contains(a.BasicUser, ":") {
				t.Fatalf("%s %s %q stored a Basic id with ':'", method, path, body)
			}
		}
	})
}
