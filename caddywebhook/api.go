package caddywebhook

import (
	"fmt"
	"net/http"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/hookgate/caddy-webhook/delivery/api"
)

func init() {
	caddy.RegisterModule(API{})
}

// API is the subscription registration API, in the dialect of an existing
// integration: `tiki` (`…/webhooks`, `…/webhooks/credentials`) or `doshii`
// (`…/webhooks`, `…/webhooks/{event}`, optional `doshii-location-id`
// header). Both also offer `…/webhooks/attempts`,
// `…/webhooks/{event}/attempts`, and POST `…/webhooks/{event}/test`,
// `/enable` and `/redeliver`.
//
// It serves the tail of the path after its last `webhooks` segment,
// whatever prefix the route has, so it mounts under
// `handle /v1/webhooks* {…}` without path stripping. Authentication is
// Caddy's job earlier in the route; `tenant` names the caller and confines
// every read and write to the caller's own webhooks.
type API struct {
	// The dialect: "tiki" or "doshii".
	Dialect string `json:"dialect"`

	// Who is calling, usually a placeholder set by authentication such as
	// {http.auth.user.id}. A request for which it is empty is refused (401).
	// Unset: everyone is the single tenant "".
	Tenant string `json:"tenant,omitempty"`

	// Send a webhook.verify request before storing a registration (always
	// on for doshii).
	Verify bool `json:"verify,omitempty"`

	// Largest accepted request body in bytes, on the wire and decoded
	// (bodies may come compressed with gzip or deflate). Default: 64 KiB.
	MaxBody int64 `json:"max_body,omitempty"`

	// How many webhooks one tenant may register; a registration beyond
	// it is refused with 400. Default: 1000; negative: no bound.
	MaxWebhooks int `json:"max_webhooks,omitempty"`

	// settings is the API handler without its engine, which exists
	// once the store is open (see sharedStore).
	settings   api.Handler
	shared     *sharedStore
	logger     *zap.Logger
	panicError any // built once, not on every request
}

// CaddyModule returns the Caddy module information.
func (API) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.webhook_api",
		New: func() caddy.Module { return new(API) },
	}
}

// Provision joins the webhooks app's delivery engine.
func (h *API) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()
	h.panicError = h.errorBody("internal error")
	if h.Dialect != api.Tiki && h.Dialect != api.Doshii {
		return fmt.Errorf("webhook_api: unknown dialect %q (want tiki or doshii)", h.Dialect)
	}
	if h.MaxBody < 0 {
		return fmt.Errorf("webhook_api: max_body must not be negative")
	}
	app, err := appFrom(ctx)
	if err != nil {
		return err
	}
	h.shared = app.shared
	h.settings = api.Handler{
		Dialect:     h.Dialect,
		Verify:      h.Verify || h.Dialect == api.Doshii,
		MaxBody:     h.MaxBody,
		MaxWebhooks: h.MaxWebhooks,
	}
	return nil
}

// ServeHTTP implements caddyhttp.MiddlewareHandler. Paths without a
// `webhooks` segment go to the next handler.
func (h *API) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) (err error) {
	base, tail, ok := api.SplitPath(r.URL.EscapedPath())
	if !ok {
		return next.ServeHTTP(w, r)
	}
	defer recoverPanic(w, r, h.logger, h.panicError, &err)
	tenant := ""
	if h.Tenant != "" {
		repl, _ := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
		if repl != nil {
			tenant = repl.ReplaceAll(h.Tenant, "")
		}
		if tenant == "" {
			// Without a caller there is no one to confine the request to.
			return writeJSON(w, http.StatusUnauthorized, h.errorBody("not authenticated"))
		}
	}
	store, err := h.shared.acquire(r.Context())
	if err != nil {
		return writeUnavailable(w, h.errorBody("service unavailable"))
	}
	defer h.shared.release()
	hd := h.settings
	hd.Engine = store.engine
	hd.ServeHTTP(w, api.Request{Request: r, Tenant: tenant, Base: base, Tail: tail})
	return nil
}

// errorBody is an error in the dialect's shape.
func (h *API) errorBody(msg string) any {
	if h.Dialect == api.Doshii {
		return map[string]string{"message": msg}
	}
	return map[string]any{"error": map[string]string{"message": msg}}
}

// Interface guards
var (
	_ caddy.Provisioner           = (*API)(nil)
	_ caddyhttp.MiddlewareHandler = (*API)(nil)
)
