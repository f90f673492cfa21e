package caddywebhook

import (
	"net/http/httptest"
	"strconv"
	"testing"

	"github.com/hookgate/caddy-webhook/ingest"
)

// The three answer headers share one backing array; a middleware adding
// to one of them afterwards (as `header +Cache-Control …` does) must not
// overwrite its neighbour.
func TestWriteAnswerHeadersAreIndependent(t *testing.T) {
	w := httptest.NewRecorder()
	a := ingest.Answer{Status: 403, Envelope: ingest.Envelope{Error: ingest.MsgNotAuthorized}}
	if err := writeAnswer(w, a); err != nil {
		t.Fatal(err)
	}
	h := w.Header()
	h.Add("Content-Type", "charset=utf-8")
	h.Add("Content-Length", "0")
	if got := h.Values("Content-Length"); len(got) != 2 || got[0] != strconv.Itoa(w.Body.Len()) {
		t.Fatalf("Content-Length = %q", got)
	}
	if got := h.Values("Cache-Control"); len(got) != 1 || got[0] != "no-store" {
		t.Fatalf("Cache-Control = %q after adding to its neighbours", got)
	}
	if w.Code != 403 || w.Body.String() != `{"success":false,"error":"not authorized"}`+"\n" {
		t.Fatalf("answer %d %q", w.Code, w.Body.String())
	}
}
