package ingest

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

// AcceptedEncodings are the Content-Encodings a push body may come in, as
// the Accept-Encoding of a 415 lists them (RFC 7694).
const AcceptedEncodings = "gzip, deflate"

// maxCodings bounds how many encodings one body may be wrapped in: each
// layer may expand to max_body, so a long list would cost as much work
// as that many bodies.
const maxCodings = 2

// decodeBody undoes the body's Content-Encoding so that it can be checked;
// the upstream still gets the body as it came, header included. The
// decoded body is bounded by max as the body on the wire is.
func decodeBody(h http.Header, body []byte, max int64) ([]byte, *Answer) {
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
		return nil, reject(http.StatusUnsupportedMediaType, OutcomeUnsupportedEncoding, MsgUnsupportedEncoding)
	}
	// The codings are listed in the order they were applied.
	for i := len(codings) - 1; i >= 0; i-- {
		var err error
		if body, err = decodeOne(codings[i], body, max); err != nil {
			var tooLarge *http.MaxBytesError
			switch {
			case errors.Is(err, errUnsupportedCoding):
				return nil, reject(http.StatusUnsupportedMediaType, OutcomeUnsupportedEncoding, MsgUnsupportedEncoding)
			case errors.As(err, &tooLarge):
				return nil, reject(http.StatusRequestEntityTooLarge, OutcomeBodyTooLarge, MsgBodyTooLarge)
			}
			return nil, reject(http.StatusBadRequest, OutcomeBodyUnreadable, MsgBodyUnreadable)
		}
	}
	return body, nil
}

var errUnsupportedCoding = errors.New("unsupported content coding")

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
		return nil, errUnsupportedCoding
	}
	if err != nil {
		return nil, err
	}
	defer r.Close()
	out, err := readAtMost(r, -1, max)
	if err != nil {
		return nil, err
	}
	if int64(len(out)) > max {
		return nil, &http.MaxBytesError{Limit: max}
	}
	return out, nil
}
