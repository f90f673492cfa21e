package ingest

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"golang.org/x/net/http/httpguts"
)

// FuzzAdmit throws arbitrary headers and bodies at the checks that precede
// forwarding: no panic, every answer is one of the protocol's, and an
// admitted body is a JSON object within max_body.
func FuzzAdmit(f *testing.F) {
	f.Add("POST", "Token "+accessKey, aliceKey, `{"menu":[]}`)
	f.Add("POST", "Token", "", "")
	f.Add("GET", "token  "+rotated, bobKey, "[]")
	f.Add("POST", "Bearer x", "\x00", `{"a":`)
	f.Add("POST", "Token "+accessKey, bobKey, " \n{}\t")
	f.Fuzz(func(t *testing.T, method, auth, token, body string) {
		// httptest.NewRequest panics on a method that is not an HTTP token,
		// the grammar header names share.
		if !httpguts.ValidHeaderFieldName(method) {
			return
		}
		g, _ := newTestGate(t, newMemWindows())
		r := httptest.NewRequest(http.MethodPost, "/", strings.NewReader(body))
		r.Method = method
		r.Header["Authorization"] = []string{auth}
		r.Header[HeaderToken] = []string{token}
		push, ans := g.Admit(r)
		if (push == nil) == (ans == nil) {
			t.Fatalf("push %v, answer %v", push, ans)
		}
		if ans != nil {
			if ans.Status < 400 || ans.Envelope.Success || ans.Envelope.Error == "" || !json.Valid(ans.JSON()) {
				t.Fatalf("answer %+v", ans)
			}
			return
		}
		if int64(len(push.Body)) > 64 || !isJSONObject(push.Body) {
			t.Fatalf("admitted body %q", push.Body)
		}
		s := push.Settle(Upstream{Status: 204, Header: http.Header{}})
		if !s.Envelope.Success {
			t.Fatalf("settle %+v", s)
		}
	})
}
