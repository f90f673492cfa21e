package caddywebhook

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/hookgate/caddy-webhook/delivery"
	"github.com/hookgate/caddy-webhook/ingest"
)

func init() {
	caddy.RegisterModule(Ingest{})
}

// Ingest authenticates inbound webhook pushes (Divvy style), enforces each
// client's push window, forwards accepted pushes to the next handler
// (normally `reverse_proxy`) and answers with a JSON envelope:
// `{"success", "error", "last_used", "next_push_after"}`.
//
// A push must carry `Authorization: Token <access key>` and
// `X-Webhook-Token: <client key>`. Both headers are removed before the push
// goes upstream; the upstream gets `X-Webhook-Client: <client name>`. A push
// consumes the client's window only when the upstream answers 2xx. The
// upstream may move the window itself with the response headers
// `Webhook-Last-Used` and `Webhook-Next-Push-After` (RFC 3339). A body
// must be a JSON object; one compressed with gzip or deflate is checked
// decoded and forwarded as it came. A client that goes away before its
// answer does not cut the push short: the upstream gets up to 30s more,
// and its answer settles the window.
type Ingest struct {
	// Access keys accepted in `Authorization: Token <key>`. Several keys
	// allow rotation. Placeholders such as {env.DIVVY_ACCESS_KEY} are
	// replaced when the config loads.
	AccessKeys []string `json:"access_keys,omitempty"`

	// The pushing clients, each identified by its key.
	Clients []IngestClient `json:"clients,omitempty"`

	// Default push window: after an accepted push, the client may not push
	// again for this long. 0 (the default) means no window. A shorter
	// interval in a new config also shortens the windows already running;
	// a longer one applies from each client's next accepted push.
	Interval caddy.Duration `json:"interval,omitempty"`

	// Largest accepted push body in bytes. Default: 10 MiB.
	MaxBody int64 `json:"max_body,omitempty"`

	// Scope sets this handler's push windows apart. A client's window (and
	// the rule that one push of a client is forwarded at a time) belongs to
	// its name, shared by every webhook_ingest of this Caddy with the same
	// scope; by default all handlers are in one scope. Give, say, a
	// staging site that names its clients as production does a scope of
	// its own, so that its pushes do not use up production's windows.
	// Changing a handler's scope starts its clients with open windows.
	Scope string `json:"scope,omitempty"`

	gate            *ingest.Gate
	scope           string        // Scope with its placeholders replaced
	clientGoneGrace time.Duration // see outlastClient
	shared          *sharedStore
	logger          *zap.Logger
}

// IngestClient is one client allowed to push.
type IngestClient struct {
	// Name of the client, passed upstream as X-Webhook-Client and logged.
	Name string `json:"name"`
	// The client's key, sent as X-Webhook-Token. Placeholders are replaced.
	Key string `json:"key"`
	// Keys accepted for the client as well while its key is rotated: give
	// the client the new key, keep the old one here until its pushes
	// stop using it (they are logged with "previous_key": true), then
	// remove it. Placeholders are replaced.
	PreviousKeys []string `json:"previous_keys,omitempty"`
	// This client's push window, overriding the handler's `interval`.
	Interval *caddy.Duration `json:"interval,omitempty"`
}

// CaddyModule returns the Caddy module information.
func (Ingest) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.webhook_ingest",
		New: func() caddy.Module { return new(Ingest) },
	}
}

// Provision resolves the keys and joins the webhooks app's store.
func (h *Ingest) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()
	h.clientGoneGrace = defaultClientGoneGrace
	cfg, err := h.gateConfig()
	if err != nil {
		return err
	}
	app, err := appFrom(ctx)
	if err != nil {
		return err
	}
	h.shared, h.scope = app.shared, cfg.Scope
	h.gate, err = ingest.NewGate(cfg, storeWindows{app.shared}, app.shared.leases, ingest.SystemClock{})
	if err != nil {
		return fmt.Errorf("webhook_ingest: %w", err)
	}
	for _, name := range app.windows.claim(cfg) {
		h.logger.Warn("another webhook_ingest gives this client a different key, yet both share its push window: give one of them a scope of its own if they are different clients",
			zap.String("client", name), zap.String("scope", cfg.Scope))
	}
	return nil
}

// windowClaims maps the push windows of one config's webhook_ingest
// handlers to the digests of their clients' keys and to their intervals.
type windowClaims struct {
	mu   sync.Mutex
	keys map[string][32]byte
	// intervals holds the shortest interval a handler gives each window:
	// the one that lets its client in first (see ingest.Window.Under).
	intervals map[string]time.Duration
}

func newWindowClaims() *windowClaims {
	return &windowClaims{keys: map[string][32]byte{}, intervals: map[string]time.Duration{}}
}

// claim records the key each of cfg's clients uses for its push window,
// and returns the clients whose window another handler of the config
// already gave a different key. Such a pair shares one window, and one
// push at a time, which two sites naming their clients alike (staging and
// production, say) do not expect.
func (w *windowClaims) claim(cfg ingest.Config) (clashes []string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, c := range cfg.Clients {
		id, key := ingest.WindowID(cfg.Scope, c.Name), sha256.Sum256([]byte(c.Key))
		if i, ok := w.intervals[id]; !ok || c.Interval < i {
			w.intervals[id] = c.Interval
		}
		if seen, ok := w.keys[id]; ok && seen != key {
			clashes = append(clashes, c.Name)
			continue
		}
		w.keys[id] = key
	}
	return clashes
}

// interval returns the shortest interval the config's handlers give a
// window; ok is false when none of them names its client.
func (w *windowClaims) interval(id string) (d time.Duration, ok bool) {
	if w == nil { // no config has started on the store
		return 0, false
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	d, ok = w.intervals[id]
	return d, ok
}

// gateConfig replaces placeholders in keys; errors never quote a key.
func (h *Ingest) gateConfig() (ingest.Config, error) {
	repl := caddy.NewReplacer()
	cfg := ingest.Config{MaxBody: h.MaxBody}
	if h.Interval < 0 {
		return cfg, fmt.Errorf("webhook_ingest: interval must not be negative")
	}
	scope, err := repl.ReplaceOrErr(h.Scope, true, true)
	if err != nil {
		return cfg, fmt.Errorf("webhook_ingest: scope: %v", err)
	}
	cfg.Scope = scope
	for i, k := range h.AccessKeys {
		v, err := resolveKey(repl, k, fmt.Sprintf("access_key #%d", i+1))
		if err != nil {
			return cfg, err
		}
		cfg.AccessKeys = append(cfg.AccessKeys, v)
	}
	for _, c := range h.Clients {
		key, err := resolveKey(repl, c.Key, fmt.Sprintf("client %q: key", c.Name))
		if err != nil {
			return cfg, err
		}
		var previous []string
		for i, k := range c.PreviousKeys {
			v, err := resolveKey(repl, k, fmt.Sprintf("client %q: previous key #%d", c.Name, i+1))
			if err != nil {
				return cfg, err
			}
			previous = append(previous, v)
		}
		interval := time.Duration(h.Interval)
		if c.Interval != nil {
			interval = time.Duration(*c.Interval)
		}
		cfg.Clients = append(cfg.Clients, ingest.Client{Name: c.Name, Key: key, PreviousKeys: previous, Interval: interval})
	}
	return cfg, nil
}

// resolveKey replaces the placeholders in a key; what names the key in
// errors, which never quote it.
func resolveKey(repl *caddy.Replacer, key, what string) (string, error) {
	v, err := repl.ReplaceOrErr(key, true, true)
	if err != nil {
		return "", fmt.Errorf("webhook_ingest: %s: %v", what, err)
	}
	if v == "" {
		return "", fmt.Errorf("webhook_ingest: %s is empty (an unset environment variable?)", what)
	}
	return v, nil
}

// maxCapture bounds how much of the upstream's body is kept: only its
// reason for a rejection is needed.
const maxCapture = 64 << 10

// capture receives the upstream's answer in place of the client's
// ResponseWriter, so the client gets the envelope and none of the
// upstream's headers.
type capture struct {
	header http.Header
	status int
	body   bytes.Buffer
}

var capturePool = sync.Pool{New: func() any { return &capture{header: http.Header{}} }}

func (c *capture) Header() http.Header { return c.header }

func (c *capture) WriteHeader(status int) {
	if c.status == 0 && status >= 200 { // 1xx are not the answer
		c.status = status
	}
}

func (c *capture) Write(b []byte) (int, error) {
	if c.status == 0 {
		c.status = http.StatusOK
	}
	if room := maxCapture - c.body.Len(); room > 0 {
		c.body.Write(b[:min(len(b), room)])
	}
	return len(b), nil
}

// forward runs the next handler with its answer captured.
func forward(r *http.Request, next caddyhttp.Handler, settle func(ingest.Upstream)) {
	c := capturePool.Get().(*capture)
	defer func() {
		clear(c.header)
		c.status = 0
		c.body.Reset()
		capturePool.Put(c)
	}()
	err := next.ServeHTTP(c, r)
	up := ingest.Upstream{Status: c.status, Header: c.header, Body: c.body.Bytes(), Err: err}
	var herr caddyhttp.HandlerError
	switch {
	case err != nil && r.Context().Err() != nil:
		// Cut short by outlastClient: reverse_proxy calls that 499, but
		// it is no answer from the upstream, not a rejection.
		up.Status = 0
	case errors.As(err, &herr):
		up.Status = herr.StatusCode
	}
	settle(up) // before the capture goes back to the pool
}

// ServeHTTP implements caddyhttp.MiddlewareHandler.
func (h *Ingest) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) (err error) {
	defer recoverPanic(w, r, h.logger, ingest.Envelope{Error: ingest.MsgInternal}, &err)
	start := time.Now()
	if _, err := h.shared.acquire(r.Context()); err != nil {
		h.log(r, ingest.Settled{Answer: unavailableAnswer}, 0, nil, start, false)
		w.Header().Set("Retry-After", "1")
		return writeAnswer(w, unavailableAnswer)
	}
	defer h.shared.release()
	push, ans := h.gate.Admit(r)
	if ans != nil {
		h.log(r, ingest.Settled{Answer: *ans}, 0, nil, start, false)
		return writeAnswer(w, *ans)
	}
	// Settle releases the lease; this covers a panic in the next handler.
	defer push.Release()

	client := r.Context()
	ctx, stop := outlastClient(client, h.clientGoneGrace)
	defer stop()
	r = r.WithContext(ctx)
	ingest.ForwardHeader(r.Header, push.Client.Name)
	r.Body = io.NopCloser(bytes.NewReader(push.Body))
	r.ContentLength = int64(len(push.Body))
	r.TransferEncoding = nil
	r.Header.Set("Content-Length", strconv.Itoa(len(push.Body)))

	var settled ingest.Settled
	var up ingest.Upstream
	forward(r, next, func(u ingest.Upstream) {
		settled, up = push.Settle(u), ingest.Upstream{Status: u.Status, Err: u.Err}
	})
	h.log(r, settled, up.Status, up.Err, start, client.Err() != nil)
	return writeAnswer(w, settled.Answer)
}

// defaultClientGoneGrace bounds how long a forwarded push goes on after its
// client has gone (see outlastClient).
const defaultClientGoneGrace = 30 * time.Second

// outlastClient returns the context of a forwarded push: it is canceled
// grace after the client's, not with it. reverse_proxy cancels its
// upstream request when the client goes away (a client timeout, say),
// but a slow backend has often taken the push by then; the window would
// stay open, and the client's retry would reach the backend a second time
// inside its window. Waiting for the upstream's answer settles the window
// by what the upstream did. stop releases the context once the push is
// settled.
func outlastClient(client context.Context, grace time.Duration) (ctx context.Context, stop func()) {
	o := &outlasting{grace: grace}
	o.Context, o.cancel = context.WithCancel(context.WithoutCancel(client))
	o.unwatch = context.AfterFunc(client, o.clientGone) // may run at once
	return o, o.stop
}

type outlasting struct {
	context.Context
	cancel  context.CancelFunc
	unwatch func() bool
	grace   time.Duration

	mu    sync.Mutex
	timer *time.Timer // runs from the client's going until cancel
}

func (o *outlasting) clientGone() {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.Err() == nil { // else the push is already settled
		o.timer = time.AfterFunc(o.grace, o.cancel)
	}
}

func (o *outlasting) stop() {
	o.unwatch()
	o.cancel()
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.timer != nil {
		o.timer.Stop()
	}
}

// unavailableAnswer is given when the store never opened (see await), or
// is being closed.
var unavailableAnswer = ingest.Answer{
	Status:   http.StatusServiceUnavailable,
	Outcome:  ingest.OutcomeStoreError,
	Envelope: ingest.Envelope{Error: ingest.MsgUnavailable},
}

// answerBuffers hold envelopes while they are written; the ResponseWriter
// copies what it is given.
var answerBuffers = sync.Pool{New: func() any { return new([]byte) }}

func writeAnswer(w http.ResponseWriter, a ingest.Answer) error {
	buf := answerBuffers.Get().(*[]byte)
	defer answerBuffers.Put(buf)
	body := a.AppendJSON((*buf)[:0])
	*buf = body
	hdr := w.Header()
	switch a.Outcome {
	case ingest.OutcomeMethodNotAllowed:
		hdr.Set("Allow", http.MethodPost)
	case ingest.OutcomeStoreFull:
		hdr.Set("Retry-After", delivery.LowSpaceRetryAfter)
	case ingest.OutcomeUnsupportedEncoding:
		hdr.Set("Accept-Encoding", ingest.AcceptedEncodings)
	}
	// One backing array for the three values, each capped so that a later
	// Add copies instead of writing into its neighbour.
	v := [3]string{"application/json", strconv.Itoa(len(body)), "no-store"}
	hdr["Content-Type"] = v[0:1:1]
	hdr["Content-Length"] = v[1:2:2]
	hdr["Cache-Control"] = v[2:3:3]
	w.WriteHeader(a.Status)
	_, err := w.Write(body)
	return err
}

// log writes one line per push: accepted ones at debug (like Caddy's own
// per-request lines; metrics count them), refusals at info, what points at
// an attack or a fault above that. Keys never appear.
func (h *Ingest) log(r *http.Request, s ingest.Settled, upstreamStatus int, upErr error, start time.Time, clientGone bool) {
	observePush(s.Outcome, h.scope)
	level := zapcore.InfoLevel
	switch s.Outcome {
	case ingest.OutcomeAccepted:
		// Unless the client never learns it was accepted, or still uses a
		// key the operator means to retire.
		if !clientGone && !s.PreviousKey {
			level = zapcore.DebugLevel
		}
	case ingest.OutcomeNotAuthorized, ingest.OutcomeUnknownToken:
		level = zapcore.WarnLevel
	case ingest.OutcomeUpstreamError, ingest.OutcomeStoreError:
		level = zapcore.ErrorLevel
	}
	if s.Detail != "" && level < zapcore.WarnLevel {
		level = zapcore.WarnLevel
	}
	ce := h.logger.Check(level, "webhook push")
	if ce == nil {
		return
	}
	fields := make([]zap.Field, 0, 10)
	if h.scope != "" { // tells apart same-named clients of two endpoints
		fields = append(fields, zap.String("scope", h.scope))
	}
	fields = append(fields,
		zap.String("client", s.Client),
		zap.String("outcome", string(s.Outcome)),
		zap.Int("status", s.Status),
		zap.String("remote_ip", remoteIP(r)),
		zap.Duration("duration", time.Since(start)),
	)
	if upstreamStatus != 0 {
		fields = append(fields, zap.Int("upstream_status", upstreamStatus))
	}
	if upErr != nil {
		fields = append(fields, zap.NamedError("upstream_error", upErr))
	}
	if clientGone {
		fields = append(fields, zap.Bool("client_gone", true))
	}
	if s.PreviousKey {
		fields = append(fields, zap.Bool("previous_key", true))
	}
	if s.Detail != "" {
		fields = append(fields, zap.String("detail", s.Detail))
	}
	if s.Envelope.NextPushAfter != "" {
		fields = append(fields, zap.String("next_push_after", s.Envelope.NextPushAfter))
	}
	ce.Write(fields...)
}

func remoteIP(r *http.Request) string {
	if v, ok := caddyhttp.GetVar(r.Context(), caddyhttp.ClientIPVarKey).(string); ok && v != "" {
		return v
	}
	return r.RemoteAddr
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Ingest)(nil)
	_ caddyhttp.MiddlewareHandler = (*Ingest)(nil)
)
