package caddywebhook

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
)

// heldWriter holds the admin answer until released, so that the request
// stays in flight.
type heldWriter struct {
	*httptest.ResponseRecorder
	writing chan struct{}
	release chan struct{}
}

func (w heldWriter) Write(b []byte) (int, error) {
	close(w.writing)
	<-w.release
	return w.ResponseRecorder.Write(b)
}

// Closing the store waits for an admin request in flight, as for the
// handlers' requests, and refuses the ones that come after with 503
// rather than letting them reach a closed database.
func TestStoreClosesAfterAdminRequestsInFlight(t *testing.T) {
	s := openedStore(t)
	current.Store(s.open.Load())
	t.Cleanup(func() { current.Store(nil) })

	w := heldWriter{httptest.NewRecorder(), make(chan struct{}), make(chan struct{})}
	served := make(chan error, 1)
	go func() { served <- adminAPI{}.serve(w, httptest.NewRequest("GET", "/webhooks/queues", nil)) }()
	<-w.writing

	closed := make(chan error, 1)
	go func() { closed <- s.Destruct() }()
	// Closing has begun once a new request is refused.
	for {
		err := adminAPI{}.serve(httptest.NewRecorder(), httptest.NewRequest("GET", "/webhooks/queues", nil))
		var apiErr caddy.APIError
		if errors.As(err, &apiErr) && apiErr.HTTPStatus == http.StatusServiceUnavailable {
			break
		}
		time.Sleep(time.Millisecond)
	}
	// Without the count, closing would be done in well under this.
	select {
	case err := <-closed:
		t.Fatalf("the store closed (%v) with an admin request in flight", err)
	case <-time.After(200 * time.Millisecond):
	}
	close(w.release)
	if err := <-served; err != nil || w.Code != 200 || w.Body.String() != "[]\n" {
		t.Fatalf("admin request: %v, %d %q", err, w.Code, w.Body)
	}
	if err := <-closed; err != nil {
		t.Fatalf("closing: %v", err)
	}
}
