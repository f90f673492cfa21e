package httpbody

import (
	"bytes"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/hookgate/caddy-webhook/internal/testcompress"
)

func TestDecode(t *testing.T) {
	const doc = `{"event":"order.created","data":{"n":1}}`
	big := strings.Repeat("x", 1000)
	var errMalformed = errors.New("any error but the named ones")
	for _, tc := range []struct {
		name      string
		encodings []string
		body      []byte
		max       int64
		want      string
		err       error
	}{
		{"none", nil, []byte(doc), 100, doc, nil},
		{"identity", []string{"identity"}, []byte(doc), 100, doc, nil},
		{"gzip", []string{"gzip"}, []byte(testcompress.Encode(t, "gzip", doc)), 100, doc, nil},
		{"x-gzip, any case and spaces", []string{" X-Gzip "}, []byte(testcompress.Encode(t, "gzip", doc)), 100, doc, nil},
		{"deflate (zlib)", []string{"deflate"}, []byte(testcompress.Encode(t, "deflate", doc)), 100, doc, nil},
		{"deflate (raw)", []string{"deflate"}, []byte(testcompress.Encode(t, "raw deflate", doc)), 100, doc, nil},
		{"two layers in one header", []string{"gzip, deflate"}, []byte(testcompress.Encode(t, "deflate", testcompress.Encode(t, "gzip", doc))), 100, doc, nil},
		{"two layers in two headers", []string{"gzip", "identity", "deflate"}, []byte(testcompress.Encode(t, "deflate", testcompress.Encode(t, "gzip", doc))), 100, doc, nil},
		{"three layers", []string{"gzip, gzip, gzip"}, []byte(doc), 100, "", ErrUnsupportedEncoding},
		{"brotli", []string{"br"}, []byte(doc), 100, "", ErrUnsupportedEncoding},
		{"unknown among known", []string{"gzip, zstd"}, []byte(testcompress.Encode(t, "gzip", doc)), 100, "", ErrUnsupportedEncoding},
		{"decoded over max", []string{"gzip"}, []byte(testcompress.Encode(t, "gzip", big)), 999, "", &http.MaxBytesError{}},
		{"decoded at max", []string{"gzip"}, []byte(testcompress.Encode(t, "gzip", big)), 1000, big, nil},
		{"not gzip", []string{"gzip"}, []byte(doc), 100, "", errMalformed},
		{"truncated gzip", []string{"gzip"}, []byte(testcompress.Encode(t, "gzip", doc))[:20], 100, "", errMalformed},
		{"not deflate", []string{"deflate"}, []byte(doc), 100, "", errMalformed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Decode(http.Header{"Content-Encoding": tc.encodings}, tc.body, tc.max)
			var tooLarge *http.MaxBytesError
			switch tc.err {
			case nil:
				if err != nil || string(got) != tc.want {
					t.Fatalf("got %q, %v; want %q", got, err, tc.want)
				}
			case ErrUnsupportedEncoding:
				if !errors.Is(err, ErrUnsupportedEncoding) {
					t.Fatalf("err %v, want %v", err, ErrUnsupportedEncoding)
				}
			case errMalformed:
				if err == nil || errors.Is(err, ErrUnsupportedEncoding) || errors.As(err, &tooLarge) {
					t.Fatalf("err %v, want a decoding error", err)
				}
			default:
				if !errors.As(err, &tooLarge) || tooLarge.Limit != tc.max {
					t.Fatalf("err %v, want a MaxBytesError with limit %d", err, tc.max)
				}
			}
		})
	}
}

// Read bounds the body on the wire and decoded, and refuses a declared
// length over the bound before reading anything.
func TestRead(t *testing.T) {
	const doc = `{"a":1}`
	big := strings.Repeat(" ", 200) + doc
	read := func(body []byte, declared int64, encoding string) ([]byte, error) {
		r := httptest.NewRequest(http.MethodPost, "/", bytes.NewReader(body))
		r.ContentLength = declared
		if encoding != "" {
			r.Header.Set("Content-Encoding", encoding)
		}
		return Read(httptest.NewRecorder(), r, 100)
	}
	if got, err := read([]byte(doc), int64(len(doc)), ""); err != nil || string(got) != doc {
		t.Fatalf("plain: %q, %v", got, err)
	}
	if got, err := read([]byte(testcompress.Encode(t, "gzip", doc)), -1, "gzip"); err != nil || string(got) != doc {
		t.Fatalf("gzip: %q, %v", got, err)
	}
	var tooLarge *http.MaxBytesError
	for name, tc := range map[string]struct {
		body     []byte
		declared int64
		encoding string
	}{
		"declared over max":          {[]byte(doc), 101, ""},
		"sent over max, unannounced": {[]byte(big), -1, ""},
		"decoded over max":           {[]byte(testcompress.Encode(t, "gzip", big)), -1, "gzip"},
	} {
		if _, err := read(tc.body, tc.declared, tc.encoding); !errors.As(err, &tooLarge) {
			t.Errorf("%s: err %v, want a MaxBytesError", name, err)
		}
	}
	if _, err := read([]byte(doc), -1, "br"); !errors.Is(err, ErrUnsupportedEncoding) {
		t.Errorf("br: err %v", err)
	}
}

func TestReadAtMost(t *testing.T) {
	body := strings.Repeat("x", 1500)
	for _, tc := range []struct {
		name          string
		declared, max int64
		want          int
	}{
		{"declared exactly", 1500, 2000, 1500},
		{"unknown length", -1, 2000, 1500},
		{"declared too little", 10, 2000, 1500},
		{"declared too much", 3000, 4000, 1500},
		{"over the limit, unknown length", -1, 1000, 1001},
		{"over the limit, declared", 1500, 1000, 1001},
		{"at the limit", -1, 1500, 1500},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, r := range []io.Reader{strings.NewReader(body), iotest.OneByteReader(strings.NewReader(body))} {
				got, err := ReadAtMost(r, tc.declared, tc.max)
				if err != nil || len(got) != tc.want || string(got) != body[:tc.want] {
					t.Fatalf("read %d bytes, err %v; want %d", len(got), err, tc.want)
				}
			}
		})
	}
	if _, err := ReadAtMost(iotest.ErrReader(errors.New("reset")), -1, 10); err == nil {
		t.Fatal("a read error was swallowed")
	}
}

// A client declaring a large body it never sends must not make the reader
// allocate that much up front.
func TestReadAtMostDoesNotTrustDeclaredLength(t *testing.T) {
	got, err := ReadAtMost(strings.NewReader("{}"), 8<<20, 10<<20)
	if err != nil || string(got) != "{}" {
		t.Fatalf("got %q, %v", got, err)
	}
	if cap(got) > preallocMax {
		t.Fatalf("allocated %d bytes for a 2-byte body", cap(got))
	}
}

// FuzzDecode throws arbitrary Content-Encoding values and bodies at Decode:
// no panic, no body along with an error, and nothing decodes past max.
func FuzzDecode(f *testing.F) {
	f.Add("gzip", []byte(testcompress.Encode(f, "gzip", `{"menu":[]}`)))
	f.Add("x-gzip, identity", []byte(testcompress.Encode(f, "gzip", `{"menu":[]}`)))
	f.Add("deflate", []byte{0x78, 0x9c, 0xab, 0xae, 0x05, 0x00, 0x01, 0x75, 0x00, 0xf9})
	f.Add("gzip, deflate", []byte{})
	f.Add("br", []byte("{}"))
	f.Fuzz(func(t *testing.T, encoding string, body []byte) {
		const max = 64
		plain, err := Decode(http.Header{"Content-Encoding": {encoding}}, body, max)
		if err != nil {
			if plain != nil {
				t.Fatalf("%d bytes returned with error %v", len(plain), err)
			}
			return
		}
		if len(plain) > max && !bytes.Equal(plain, body) {
			t.Fatalf("decoded %d bytes, over max", len(plain))
		}
	})
}
