package caddywebhook

import (
	"net/http"

	"go.uber.org/zap"
)

// recoverPanic, deferred at the top of a handler, turns a panic in it (or
// in the handlers it calls) into a logged 500 with a JSON body of the
// handler's own shape, instead of a dropped connection.
func recoverPanic(w http.ResponseWriter, r *http.Request, logger *zap.Logger, body any, err *error) {
	rec := recover()
	if rec == nil {
		return
	}
	if rec == http.ErrAbortHandler {
		panic(rec) // a deliberate abort (reverse_proxy uses it), not a bug
	}
	logger.Error("panic while handling a request",
		zap.Any("panic", rec), zap.String("method", r.Method), zap.String("uri", r.RequestURI), zap.Stack("stack"))
	*err = writeJSON(w, http.StatusInternalServerError, body)
}
