package ingest

import (
	"errors"
	"net/http"

	"github.com/hookgate/caddy-webhook/internal/httpbody"
)

// AcceptedEncodings are the Content-Encodings a push body may come in, as
// the Accept-Encoding of a 415 lists them (RFC 7694).
const AcceptedEncodings = httpbody.Accepted

// decodeBody undoes the body's Content-Encoding so that it can be checked;
// the upstream still gets the body as it came, header included. The
// decoded body is bounded by max_body as the body on the wire is.
func decodeBody(h http.Header, body []byte, max int64) ([]byte, *Answer) {
	plain, err := httpbody.Decode(h, body, max)
	var tooLarge *http.MaxBytesError
	switch {
	case err == nil:
		return plain, nil
	case errors.Is(err, httpbody.ErrUnsupportedEncoding):
		return nil, reject(http.StatusUnsupportedMediaType, OutcomeUnsupportedEncoding, MsgUnsupportedEncoding)
	case errors.As(err, &tooLarge):
		return nil, reject(http.StatusRequestEntityTooLarge, OutcomeBodyTooLarge, MsgBodyTooLarge)
	}
	return nil, reject(http.StatusBadRequest, OutcomeBodyUnreadable, MsgBodyUnreadable)
}
