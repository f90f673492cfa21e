package ingest

import (
	"encoding/json"
	"testing"
)

// The hand-written encoder must give exactly what encoding/json gives, for
// protocol messages and for whatever an upstream put in its reason.
func TestAnswerJSONMatchesEncodingJSON(t *testing.T) {
	for _, msg := range []string{
		"", MsgTooEarlyPrefix + "2026-11-23T10:00:00Z", MsgUpstreamPrefix + "upstream answered 502 Bad Gateway",
		`quote " and backslash \`, "<script>&amp;</script>", "tab\tnewline\nnul\x00", "ünïcödé ✓",
		"line separator \u2028 paragraph \u2029", "invalid \xff\xfe utf-8", "del \x7f",
	} {
		for _, e := range []Envelope{
			{Error: msg},
			{Success: true, Error: msg, LastUsed: "2026-11-23T10:00:00Z", NextPushAfter: "2026-11-23T10:05:00.5Z"},
			{Error: msg, NextPushAfter: msg},
			{LastUsed: msg},
		} {
			checkEnvelopeJSON(t, e)
		}
	}
}

func FuzzAnswerJSON(f *testing.F) {
	f.Add(true, "not authorized", "2026-11-23T10:00:00Z", "")
	f.Add(false, "<b>\u2028\xff", "", "\"\\")
	f.Fuzz(func(t *testing.T, success bool, msg, last, next string) {
		checkEnvelopeJSON(t, Envelope{Success: success, Error: msg, LastUsed: last, NextPushAfter: next})
	})
}

func checkEnvelopeJSON(t *testing.T, e Envelope) {
	t.Helper()
	want, err := json.Marshal(e)
	if err != nil {
		t.Fatal(err)
	}
	want = append(want, '\n')
	if got := (Answer{Envelope: e}).JSON(); string(got) != string(want) {
		t.Fatalf("envelope %+v:\n got %s\nwant %s", e, got, want)
	}
}
