package ingest

import (
	"net/http"
	"strings"
	"testing"

	"github.com/hookgate/caddy-webhook/internal/testcompress"
)

func encodedPush(body string, encodings ...string) *http.Request {
	r := pushReq("POST", "Token "+accessKey, aliceKey, body)
	for _, e := range encodings {
		r.Header.Add("Content-Encoding", e)
	}
	return r
}

// A compressed body is checked as decoded and forwarded as it came.
func TestCompressedBodies(t *testing.T) {
	const menu = `{"menu":[1,2]}`
	accepted := []struct {
		name      string
		body      string
		encodings []string
	}{
		{"gzip", testcompress.Encode(t, "gzip", menu), []string{"gzip"}},
		{"x-gzip, any case", testcompress.Encode(t, "gzip", menu), []string{" X-GZIP "}},
		{"deflate (zlib)", testcompress.Encode(t, "deflate", menu), []string{"deflate"}},
		{"deflate (raw)", testcompress.Encode(t, "raw deflate", menu), []string{"deflate"}},
		{"identity", menu, []string{"identity"}},
		{"gzip then deflate, one header", testcompress.Encode(t, "deflate", testcompress.Encode(t, "gzip", menu)), []string{"gzip, deflate"}},
		{"gzip then deflate, two headers", testcompress.Encode(t, "deflate", testcompress.Encode(t, "gzip", menu)), []string{"gzip", "identity", "deflate"}},
	}
	for _, tc := range accepted {
		t.Run(tc.name, func(t *testing.T) {
			g, _ := newTestGate(t, newMemWindows())
			push, ans := g.Admit(encodedPush(tc.body, tc.encodings...))
			if ans != nil {
				t.Fatalf("refused: %+v", ans)
			}
			if string(push.Body) != tc.body {
				t.Fatal("the body was not forwarded as it came")
			}
			push.Release()
		})
	}

	bomb := testcompress.Encode(t, "gzip", `{"x":"`+strings.Repeat("a", 10000)+`"}`)
	refused := []struct {
		name      string
		body      string
		encodings []string
		status    int
		msg       string
		outcome   Outcome
	}{
		{"not an object once decoded", testcompress.Encode(t, "gzip", "[1]"), []string{"gzip"}, 400, MsgBodyNotObject, OutcomeBodyNotObject},
		{"not compressed", menu, []string{"gzip"}, 400, MsgBodyUnreadable, OutcomeBodyUnreadable},
		{"cut short", testcompress.Encode(t, "gzip", menu)[:20], []string{"gzip"}, 400, MsgBodyUnreadable, OutcomeBodyUnreadable},
		{"decoded over max_body", bomb, []string{"gzip"}, 413, MsgBodyTooLarge, OutcomeBodyTooLarge},
		{"brotli", menu, []string{"br"}, 415, MsgUnsupportedEncoding, OutcomeUnsupportedEncoding},
		{"unknown among known", testcompress.Encode(t, "gzip", menu), []string{"gzip, zstd"}, 415, MsgUnsupportedEncoding, OutcomeUnsupportedEncoding},
		{"three layers", menu, []string{"gzip, gzip, gzip"}, 415, MsgUnsupportedEncoding, OutcomeUnsupportedEncoding},
	}
	if len(bomb) > 64 {
		t.Fatalf("the compressed bomb is %d bytes, over the test gate's max_body", len(bomb))
	}
	for _, tc := range refused {
		t.Run(tc.name, func(t *testing.T) {
			g, _ := newTestGate(t, newMemWindows())
			push, ans := g.Admit(encodedPush(tc.body, tc.encodings...))
			if push != nil {
				t.Fatal("admitted")
			}
			if ans.Status != tc.status || ans.Envelope.Error != tc.msg || ans.Outcome != tc.outcome {
				t.Fatalf("got %d %q %s, want %d %q %s", ans.Status, ans.Envelope.Error, ans.Outcome, tc.status, tc.msg, tc.outcome)
			}
			if lease := g.leaseOf("alice"); !lease.TryAcquire() {
				t.Fatal("lease leaked")
			}
		})
	}
}
