package caddywebhook

import (
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"testing/iotest"

	"go.uber.org/zap"
)

// A body that breaks off (the client went away, a proxy in front failed)
// is a 400 of its own, not mistaken for a malformed or oversized one;
// nothing is queued since the store is never reached.
func TestPublishUnreadableBody(t *testing.T) {
	h := &Publish{MaxBody: 1 << 10, logger: zap.NewNop()}
	cases := []struct {
		name   string
		body   string
		read   error
		status int
		want   string
	}{
		{"broken off", `{"event":"e","da`, errors.New("unexpected EOF"), 400, `{"error":"request body could not be read"}`},
		{"too large", strings.Repeat("x", 2<<10), nil, 413, `{"error":"request body too large"}`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var body io.Reader = strings.NewReader(tc.body)
			if tc.read != nil {
				body = io.MultiReader(body, iotest.ErrReader(tc.read))
			}
			r := httptest.NewRequest(http.MethodPost, "/events", body)
			w := httptest.NewRecorder()
			if err := h.ServeHTTP(w, r, nil); err != nil {
				t.Fatal(err)
			}
			if w.Code != tc.status || strings.TrimSpace(w.Body.String()) != tc.want || w.Header().Get("Content-Type") != "application/json" {
				t.Fatalf("got %d %q (%s), want %d %s", w.Code, w.Body.String(), w.Header().Get("Content-Type"), tc.status, tc.want)
			}
		})
	}
}
