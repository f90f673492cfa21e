// Package testcompress compresses request bodies for tests, as HTTP
// clients that send Content-Encoding do.
package testcompress

import (
	"compress/flate"
	"compress/gzip"
	"compress/zlib"
	"io"
	"strings"
	"testing"
)

// Encode returns s compressed with coding: "gzip", "deflate" (zlib, as
// HTTP's deflate is) or "raw deflate" (no zlib header, as some clients
// send it).
func Encode(t testing.TB, coding, s string) string {
	t.Helper()
	var b strings.Builder
	var w io.WriteCloser
	switch coding {
	case "gzip":
		w = gzip.NewWriter(&b)
	case "deflate":
		w = zlib.NewWriter(&b)
	case "raw deflate":
		w, _ = flate.NewWriter(&b, flate.DefaultCompression)
	default:
		t.Fatalf("testcompress: unknown coding %q", coding)
	}
	if _, err := io.WriteString(w, s); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return b.String()
}
