// Package httpbody reads request bodies for the handlers that must look
// inside them (pushes, publishes, registrations): bounded, and decoded
// when they come compressed.
package httpbody

import (
	"bytes"
	"compress/flate"
	"compress/gzip"
	"compress/zlib"
	"errors"
	"io"
	"net/http"
	"strings"
)

// Accepted lists the Content-Encodings a body may come in, as the
// Accept-Encoding of a 415 names them (RFC 7694).
const Accepted = "gzip, deflate"

// ErrUnsupportedEncoding: the body's Content-Encoding is not one of
// Accepted, or it wraps more layers than maxCodings. Answer 415 with
// Accept-Encoding: Accepted.
var ErrUnsupportedEncoding = errors.New("unsupported content encoding")

// maxCodings bounds how many encodings one body may be wrapped in: each
// layer may expand to max, so a long list would cost as much work as
// that many bodies.
const maxCodings = 2

// Decode undoes the Content-Encoding of body as h declares it, so that a
// handler can check or parse it; the decoded body is bounded by max as
// the body on the wire is. Its errors: ErrUnsupportedEncoding, an
// *http.MaxBytesError when the decoded body is over max, any other error
// when the body does not decode.
func Decode(h http.Header, body []byte, max int64) ([]byte, error) {
	values := h.Values("Content-Encoding")
	if len(values) == 0 {
		return body, nil
	}
	var codings []string
	for _, v := range values {
		for c := range strings.SplitSeq(v, ",") {
			if c = strings.ToLower(strings.TrimSpace(c)); c != "" && c != "identity" {
				codings = append(codings, c)
			}
		}
	}
	if len(codings) > maxCodings {
		return nil, ErrUnsupportedEncoding
	}
	// The codings are listed in the order they were applied.
	for i := len(codings) - 1; i >= 0; i-- {
		var err error
		if body, err = decodeOne(codings[i], body, max); err != nil {
			return nil, err
		}
	}
	return body, nil
}

func decodeOne(coding string, body []byte, max int64) ([]byte, error) {
	var r io.ReadCloser
	var err error
	switch coding {
	case "gzip", "x-gzip":
		r, err = gzip.NewReader(bytes.NewReader(body))
	case "deflate":
		// HTTP's deflate is zlib-wrapped (RFC 9110); some clients send
		// the raw stream, which has no zlib header.
		if r, err = zlib.NewReader(bytes.NewReader(body)); errors.Is(err, zlib.ErrHeader) {
			r, err = flate.NewReader(bytes.NewReader(body)), nil
		}
	default:
		return nil, ErrUnsupportedEncoding
	}
	if err != nil {
		return nil, err
	}
	defer r.Close()
	out, err := ReadAtMost(r, -1, max)
	if err != nil {
		return nil, err
	}
	if int64(len(out)) > max {
		return nil, &http.MaxBytesError{Limit: max}
	}
	return out, nil
}

// Read reads r's body, at most max bytes of it on the wire and decoded,
// and returns it decoded. Its errors are Decode's, and an
// *http.MaxBytesError for a body over max on the wire as well.
func Read(w http.ResponseWriter, r *http.Request, max int64) ([]byte, error) {
	if r.ContentLength > max {
		return nil, &http.MaxBytesError{Limit: max}
	}
	// MaxBytesReader also tells the server to close the connection of a
	// client that sends more.
	body, err := ReadAtMost(http.MaxBytesReader(w, r.Body, max), r.ContentLength, max)
	if err != nil {
		return nil, err
	}
	return Decode(r.Header, body, max)
}

// preallocMax bounds the buffer a declared length sizes up front.
const preallocMax = 64 << 10

// ReadAtMost reads r to EOF, or to one byte past max so the caller can
// tell the body was too large. A declared length (-1: unknown) sizes the
// buffer once (io.ReadAll would grow it from 512 bytes) up to
// preallocMax: a client declaring megabytes it never sends gets no more
// than that.
func ReadAtMost(r io.Reader, declared, max int64) ([]byte, error) {
	limit := max + 1
	if limit < 0 {
		limit = max
	}
	size := int64(512)
	if declared >= 0 {
		size = min(declared+1, preallocMax) // +1: EOF is seen without growing
	}
	b := make([]byte, 0, min(size, limit))
	for int64(len(b)) < limit {
		if len(b) == cap(b) {
			b = append(b, 0)[:len(b)]
		}
		n, err := r.Read(b[len(b):min(int64(cap(b)), limit)])
		b = b[:len(b)+n]
		if err == io.EOF {
			return b, nil
		}
		if err != nil {
			return b, err
		}
	}
	return b, nil
}
