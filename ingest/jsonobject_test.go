package ingest

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

// jsonValidObject is the definition isJSONObject must follow.
func jsonValidObject(b []byte) bool {
	t := bytes.TrimLeft(b, " \t\r\n")
	return len(t) > 0 && t[0] == '{' && json.Valid(t)
}

var jsonObjectCases = []struct {
	body string
	ok   bool
}{
	{`{}`, true},
	{" \t\r\n{ } \n", true},
	{`{"a":1}`, true},
	{`{"a":[1,2,{"b":null}],"c":{"d":[]},"e":true,"f":false,"g":"h"}`, true},
	{`{"n":[0,-0,1.5,-2.25e10,3E-2,4e+3,10]}`, true},
	{`{"s":"\" \\ \/ \b \f \n \r \t \u00e9 \uD83D\uDE00"}`, true},
	{"{\"s\":\"\xff\xfe not UTF-8\"}", true}, // as json.Valid: bytes are not checked
	{`{"a":[[],[[]],{}]}`, true},

	{``, false},
	{`   `, false},
	{`[]`, false},
	{`"{}"`, false},
	{`null`, false},
	{`{`, false},
	{`{"a"}`, false},
	{`{"a":}`, false},
	{`{"a":1,}`, false},
	{`{,"a":1}`, false},
	{`{"a":1 "b":2}`, false},
	{`{a:1}`, false},
	{`{'a':1}`, false},
	{`{"a":[1,]}`, false},
	{`{"a":[1 2]}`, false},
	{`{"a":]}`, false},
	{`{"a":[}`, false},
	{`{"a":{]}`, false},
	{`{} {}`, false},
	{`{}x`, false},
	{"{}\x00", false},
	{"\ufeff{}", false},
	{`{"n":01}`, false},
	{`{"n":1.}`, false},
	{`{"n":.5}`, false},
	{`{"n":+1}`, false},
	{`{"n":-}`, false},
	{`{"n":1e}`, false},
	{`{"n":1e+}`, false},
	{`{"n":0x10}`, false},
	{`{"n":NaN}`, false},
	{`{"b":tru}`, false},
	{`{"b":True}`, false},
	{`{"b":nul}`, false},
	{`{"s":"unterminated}`, false},
	{"{\"s\":\"tab\there\"}", false},
	{`{"s":"\x"}`, false},
	{`{"s":"\u12"}`, false},
	{`{"s":"\u12G4"}`, false},
	{`{"s":"\`, false},
}

func TestIsJSONObject(t *testing.T) {
	for _, c := range jsonObjectCases {
		if got := isJSONObject([]byte(c.body)); got != c.ok {
			t.Errorf("isJSONObject(%q) = %v, want %v", c.body, got, c.ok)
		}
		if want := jsonValidObject([]byte(c.body)); want != c.ok {
			t.Errorf("the case %q is wrong: json.Valid says %v", c.body, want)
		}
	}
}

// Nesting is refused beyond encoding/json's limit, at the same depth, and
// without recursion: a body of nothing but brackets must not grow the
// stack.
func TestIsJSONObjectNesting(t *testing.T) {
	nested := func(depth int, open, close string) []byte {
		inner := strings.Repeat(open, depth-1) + "0" + strings.Repeat(close, depth-1)
		return []byte(`{"a":` + inner + `}`)
	}
	for _, depth := range []int{maxNesting - 1, maxNesting, maxNesting + 1, 5 * maxNesting} {
		for _, pair := range [][2]string{{"[", "]"}, {`{"k":`, "}"}} {
			b := nested(depth, pair[0], pair[1])
			got, want := isJSONObject(b), jsonValidObject(b)
			if got != want {
				t.Errorf("depth %d of %s: isJSONObject = %v, json.Valid = %v", depth, pair[0], got, want)
			}
			if want != (depth <= maxNesting) {
				t.Errorf("depth %d of %s: json.Valid = %v; has encoding/json's limit changed?", depth, pair[0], want)
			}
		}
	}
	unclosed := bytes.Repeat([]byte("["), 1<<20)
	if isJSONObject(append([]byte(`{"a":`), unclosed...)) {
		t.Error("a million open brackets were taken for an object")
	}
}

// FuzzIsJSONObject holds isJSONObject to json.Valid.
func FuzzIsJSONObject(f *testing.F) {
	for _, c := range jsonObjectCases {
		f.Add([]byte(c.body))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if got, want := isJSONObject(b), jsonValidObject(b); got != want {
			t.Fatalf("isJSONObject(%q) = %v, json.Valid says %v", b, got, want)
		}
	})
}

func BenchmarkIsJSONObject(b *testing.B) {
	body := []byte(`{"menu":[{"sku":"A1","name":"Flat white","price":4.5},{"sku":"B2","name":"Croissant","price":3.2}],"updated_at":"2026-11-23T10:00:00Z"}`)
	b.Run("isJSONObject", func(b *testing.B) {
		b.SetBytes(int64(len(body)))
		for b.Loop() {
			if !isJSONObject(body) {
				b.Fatal("refused")
			}
		}
	})
	b.Run("json.Valid", func(b *testing.B) {
		b.SetBytes(int64(len(body)))
		for b.Loop() {
			if !jsonValidObject(body) {
				b.Fatal("refused")
			}
		}
	})
}
