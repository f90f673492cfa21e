package caddywebhook

import (
	"encoding/json"
	"errors"
	"net/http"
	"strconv"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/hookgate/caddy-webhook/delivery"
	"github.com/hookgate/caddy-webhook/internal/httpbody"
	"github.com/hookgate/caddy-webhook/internal/store"
)

func init() {
	caddy.RegisterModule(Publish{})
}

// DefaultPublishMaxBody bounds a publish request when max_body is not set.
const DefaultPublishMaxBody = 1 << 20

// Publish is where a backend publishes an event for delivery:
// `POST {"event", "tenant", "location", "id", "data"}`. It answers
// `202 {"id", "deliveries"}` once the message and one delivery per
// matching subscription are durably queued. Publishing an `id` again for
// the same tenant stores nothing new and answers as the first time.
//
// Expose it only to the backend (e.g. on a loopback listener or behind
// authentication): whoever can publish can make the server send requests
// to every subscriber.
//
// A body may come compressed with gzip or deflate (`Content-Encoding`);
// `max_body` bounds it on the wire and decoded.
type Publish struct {
	// Largest accepted request body in bytes, on the wire and decoded.
	// Default: 1 MiB.
	MaxBody int64 `json:"max_body,omitempty"`

	shared *sharedStore
	logger *zap.Logger
}

// CaddyModule returns the Caddy module information.
func (Publish) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.webhook_publish",
		New: func() caddy.Module { return new(Publish) },
	}
}

// Provision joins the webhooks app's delivery engine.
func (h *Publish) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()
	if h.MaxBody == 0 {
		h.MaxBody = DefaultPublishMaxBody
	}
	if h.MaxBody < 0 {
		return errors.New("webhook_publish: max_body must not be negative")
	}
	app, err := appFrom(ctx)
	if err != nil {
		return err
	}
	h.shared = app.shared
	return nil
}

// publishPanicBody is built once: deferring recoverPanic with a literal
// would allocate it on every publish.
var (
	publishPanicBody       any = map[string]string{"error": "internal error"}
	publishUnavailableBody any = map[string]string{"error": "service unavailable"}
)

// ServeHTTP implements caddyhttp.MiddlewareHandler. It always answers;
// next is not called.
func (h *Publish) ServeHTTP(w http.ResponseWriter, r *http.Request, _ caddyhttp.Handler) (err error) {
	defer recoverPanic(w, r, h.logger, publishPanicBody, &err)
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		return writeJSONError(w, http.StatusMethodNotAllowed, "method not allowed")
	}
	body, err := httpbody.Read(w, r, h.MaxBody)
	if err != nil {
		return writeBodyError(w, err)
	}
	msg, err := delivery.ParsePublish(body)
	if err != nil {
		return writeJSONError(w, http.StatusBadRequest, err.Error())
	}
	o, err := h.shared.acquire(r.Context())
	if err != nil {
		return writeUnavailable(w, publishUnavailableBody)
	}
	defer h.shared.release()
	res, err := o.engine.Publish(msg)
	if errors.Is(err, store.ErrLowSpace) {
		// The store's guard logs when this starts and ends.
		w.Header().Set("Retry-After", delivery.LowSpaceRetryAfter)
		return writeJSONError(w, http.StatusInsufficientStorage, delivery.MsgLowSpace)
	}
	if errors.Is(err, delivery.ErrIDReused) {
		h.logger.Info("publish refused: id reused for another message",
			zap.String("id", msg.ID), zap.String("event", msg.Event), zap.String("tenant", msg.Tenant))
		return writeJSONError(w, http.StatusConflict, err.Error())
	}
	if err != nil {
		h.logger.Error("publishing event", zap.String("event", msg.Event), zap.Error(err))
		return writeJSONError(w, http.StatusInternalServerError, "internal error")
	}
	if !res.Duplicate {
		published.Inc()
	}
	h.logger.Debug("event published",
		zap.String("id", res.ID), zap.String("event", msg.Event), zap.String("tenant", msg.Tenant),
		zap.Int("deliveries", res.Deliveries), zap.Bool("duplicate", res.Duplicate))
	return writeJSON(w, http.StatusAccepted, res)
}

// writeBodyError answers a body httpbody.Read refused.
func writeBodyError(w http.ResponseWriter, err error) error {
	var tooLarge *http.MaxBytesError
	switch {
	case errors.As(err, &tooLarge):
		return writeJSONError(w, http.StatusRequestEntityTooLarge, "request body too large")
	case errors.Is(err, httpbody.ErrUnsupportedEncoding):
		w.Header().Set("Accept-Encoding", httpbody.Accepted)
		return writeJSONError(w, http.StatusUnsupportedMediaType, "unsupported content encoding")
	}
	return writeJSONError(w, http.StatusBadRequest, "request body could not be read")
}

func writeJSONError(w http.ResponseWriter, status int, msg string) error {
	return writeJSON(w, status, map[string]string{"error": msg})
}

// writeUnavailable answers a request that found no open store: the
// webhooks app did not start in time, or failed to.
func writeUnavailable(w http.ResponseWriter, body any) error {
	w.Header().Set("Retry-After", "1")
	return writeJSON(w, http.StatusServiceUnavailable, body)
}

func writeJSON(w http.ResponseWriter, status int, v any) error {
	body, err := json.Marshal(v)
	if err != nil {
		return caddyhttp.Error(http.StatusInternalServerError, err)
	}
	body = append(body, '\n')
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, err = w.Write(body)
	return err
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Publish)(nil)
	_ caddyhttp.MiddlewareHandler = (*Publish)(nil)
)
