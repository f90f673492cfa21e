package caddywebhook

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/hookgate/caddy-webhook/delivery"
	"github.com/hookgate/caddy-webhook/internal/store"
)

func init() {
	caddy.RegisterModule(adminAPI{})
}

// adminAPI is the `admin.api.webhooks` module: operator routes on Caddy's
// admin endpoint.
//
//	GET  /webhooks/subscriptions                  every subscription, its health and queue
//	GET  /webhooks/subscriptions/{id}             one of them
//	GET  /webhooks/failed[?subscription=id&limit=n]   failed deliveries
//	POST /webhooks/subscriptions/{id}/enable      re-enable a disabled subscription
//	POST /webhooks/subscriptions/{id}/redeliver   queue its failed deliveries again
//	GET  /webhooks/queues                         pending deliveries per subscription, removed ones included
//	POST /webhooks/subscriptions/{id}/discard     fail the backlog of a removed or disabled subscription
//	GET  /webhooks/windows[?scope=s]              push windows on record
//	GET  /webhooks/windows/{client}[?scope=s]     one client's push window
//	DELETE /webhooks/windows/{client}[?scope=s]   forget it (a client no longer configured)
//	POST /webhooks/windows/{client}/open[?scope=s]  let a client push at once
//	GET  /webhooks/backup                         a consistent copy of the store (see backup.go)
//
// Admin modules are provisioned before apps and are not rolled back with a
// failed reload, so the running engine is looked up on every request.
type adminAPI struct {
	logger *zap.Logger
}

// CaddyModule returns the Caddy module information.
func (adminAPI) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "admin.api.webhooks",
		New: func() caddy.Module { return new(adminAPI) },
	}
}

// Provision sets up the module's logger.
func (a *adminAPI) Provision(ctx caddy.Context) error {
	a.logger = ctx.Logger()
	return nil
}

// Routes returns the admin routes.
func (a adminAPI) Routes() []caddy.AdminRoute {
	return []caddy.AdminRoute{{Pattern: "/webhooks/", Handler: caddy.AdminHandlerFunc(a.serve)}}
}

func (a adminAPI) serve(w http.ResponseWriter, r *http.Request) error {
	o := useCurrent()
	if o == nil {
		return caddy.APIError{HTTPStatus: http.StatusServiceUnavailable, Err: errors.New("the webhooks app is not running")}
	}
	defer o.inUse.leave()
	eng := o.engine
	parts := strings.Split(strings.Trim(strings.TrimPrefix(r.URL.EscapedPath(), "/webhooks/"), "/"), "/")
	for i, p := range parts {
		u, err := url.PathUnescape(p)
		if err != nil {
			return apiErr(http.StatusBadRequest, "malformed path")
		}
		parts[i] = u
	}
	switch {
	case len(parts) == 1 && parts[0] == "subscriptions":
		return onlyGet(r, func() error { return a.listSubscriptions(w, eng) })
	case len(parts) == 1 && parts[0] == "failed":
		return onlyGet(r, func() error { return a.listFailed(w, r, eng) })
	case len(parts) == 1 && parts[0] == "queues":
		return onlyGet(r, func() error { return a.listQueues(w, eng) })
	case len(parts) == 2 && parts[0] == "subscriptions":
		return onlyGet(r, func() error {
			sub, ok := eng.Subscription(parts[1])
			if !ok {
				return noSubscription(eng, parts[1], "")
			}
			queued, err := eng.Store().QueueDepth(sub.ID)
			if err != nil {
				return apiErr(http.StatusInternalServerError, err.Error())
			}
			return writeAdmin(w, subscriptionView(eng, sub, queued))
		})
	case len(parts) == 3 && parts[0] == "subscriptions":
		return a.act(w, r, eng, parts[1], parts[2])
	case parts[0] == "windows":
		return a.windows(w, r, o, parts[1:])
	case len(parts) == 1 && parts[0] == "backup":
		return onlyGet(r, func() error { return a.backup(w, o) })
	}
	return apiErr(http.StatusNotFound, "no such route")
}

// useCurrent returns the running config's store, counted as in use (the
// caller leaves it), or nil when none runs. Closing the store waits for
// the uses counted, as for requests to the handlers: a discard of a large
// backlog, say, would otherwise fail midway on the closed database.
// Closing takes the store out of current before it refuses uses, so a
// store found closing has been replaced by a newer one, or by none.
func useCurrent() *openStore {
	for range 3 {
		o := current.Load()
		if o == nil {
			return nil
		}
		if o.inUse.enter() {
			return o
		}
	}
	return nil
}

func (a adminAPI) act(w http.ResponseWriter, r *http.Request, eng *delivery.Engine, id, action string) error {
	if action == "attempts" {
		return onlyGet(r, func() error { return a.listAttempts(w, r, eng, id) })
	}
	if !slices.Contains([]string{"enable", "redeliver", "retry", "discard", "test"}, action) {
		return apiErr(http.StatusNotFound, "no such route")
	}
	if r.Method != http.MethodPost {
		return apiErr(http.StatusMethodNotAllowed, "method not allowed; use POST")
	}
	if action == "discard" {
		return a.discard(w, eng, id)
	}
	sub, ok := eng.Subscription(id)
	if !ok {
		return noSubscription(eng, id, "")
	}
	switch action {
	case "test":
		return a.test(w, r, eng, &sub)
	case "retry":
		n, err := eng.RetryNow(r.Context(), id)
		switch {
		case errors.Is(err, delivery.ErrQueueHeld), errors.Is(err, delivery.ErrAttemptsInFlight):
			return apiErr(http.StatusConflict, err.Error())
		case err != nil:
			return apiErr(writeFailure(err), fmt.Sprintf("made %d due now, then: %v", n, err))
		}
		return writeAdmin(w, map[string]any{"subscription": id, "rescheduled": n})
	case "enable":
		if err := eng.Enable(id); err != nil {
			return apiErr(http.StatusInternalServerError, err.Error())
		}
		return writeAdmin(w, map[string]any{"subscription": id, "enabled": true})
	}
	n, err := eng.Redeliver(id)
	if err != nil {
		return apiErr(writeFailure(err), err.Error())
	}
	return writeAdmin(w, map[string]any{"subscription": id, "redelivered": n})
}

// noSubscription is the 404 for an ID that names no subscription. Static
// subscriptions are configured by name but addressed as static:<name>,
// so a bare name gets pointed at its ID.
func noSubscription(eng *delivery.Engine, id, detail string) error {
	msg := "no subscription " + id + detail
	if _, ok := eng.Subscription(delivery.StaticID(id)); ok {
		msg += "; the static subscription " + id + " is " + delivery.StaticID(id)
	}
	return apiErr(http.StatusNotFound, msg)
}

// discard fails the backlog of a subscription that is disabled or no
// longer configured or registered (its ID comes from GET /webhooks/queues).
func (a adminAPI) discard(w http.ResponseWriter, eng *delivery.Engine, id string) error {
	if _, ok := eng.Subscription(id); !ok {
		if n, err := eng.Store().QueueDepth(id); err == nil && n == 0 {
			return noSubscription(eng, id, " and no deliveries queued for it")
		}
	}
	n, err := eng.Discard(id)
	switch {
	case errors.Is(err, delivery.ErrSubscriptionActive), errors.Is(err, delivery.ErrAttemptsInFlight),
		errors.Is(err, delivery.ErrQueueHeld):
		return apiErr(http.StatusConflict, err.Error())
	case err != nil:
		return apiErr(writeFailure(err), fmt.Sprintf("discarded %d, then: %v", n, err))
	}
	return writeAdmin(w, map[string]any{"subscription": id, "discarded": n})
}

// listQueues shows every subscription with pending deliveries, including
// those no longer configured or registered, which no other listing shows.
func (a adminAPI) listQueues(w http.ResponseWriter, eng *delivery.Engine) error {
	depths, err := eng.Store().QueueDepths()
	if err != nil {
		return apiErr(http.StatusInternalServerError, err.Error())
	}
	type queueJSON struct {
		Subscription string `json:"subscription"`
		Queued       int    `json:"queued"`
		Registered   bool   `json:"registered"`
	}
	out := make([]queueJSON, 0, len(depths))
	for id, n := range depths {
		_, ok := eng.Subscription(id)
		out = append(out, queueJSON{id, n, ok})
	}
	slices.SortFunc(out, func(a, b queueJSON) int { return strings.Compare(a.Subscription, b.Subscription) })
	return writeAdmin(w, out)
}

// subscription is what operators see of one; secrets are only named.
type subscriptionJSON struct {
	ID       string   `json:"id"`
	Name     string   `json:"name,omitempty"`
	Source   string   `json:"source"`
	URL      string   `json:"url"`
	Events   []string `json:"events"`
	Tenant   string   `json:"tenant"`
	Location string   `json:"location,omitempty"`
	Auth     []string `json:"auth"`
	Queued   int      `json:"queued"`
	// NextAttempt is when the earliest queued delivery is due: in the
	// past, it waits for a worker (or, disabled, for enable).
	NextAttempt *time.Time      `json:"next_attempt,omitempty"`
	Health      delivery.Health `json:"health"`
	// StorePause is set while its deliveries pause because the store
	// failed to read its queue or to record an outcome.
	StorePause *delivery.StorePause `json:"store_pause,omitempty"`
}

func subscriptionView(eng *delivery.Engine, s delivery.Subscription, queued int) subscriptionJSON {
	v := subscriptionJSON{
		ID: s.ID, Name: s.Name, Source: s.Source, URL: delivery.RedactURL(s.URL), Events: s.Events,
		Tenant: s.Tenant, Location: s.Location, Auth: []string{}, Queued: queued,
	}
	if v.Source == "" {
		v.Source = "static"
	}
	a := s.Auth
	for _, kind := range []struct {
		set  bool
		name string
	}{
		{a.SecretHeader != "", "secret_header:" + a.SecretHeader}, {a.Token != "", "token"},
		{a.BasicUser != "" || a.BasicPassword != "", "basic"}, {a.Authorization != "", "authorization"},
		{a.SigningSecret != "", "signature"},
	} {
		if kind.set {
			v.Auth = append(v.Auth, kind.name)
		}
	}
	v.Health, _ = eng.Health(s.ID)
	if p, ok := eng.StorePause(s.ID); ok {
		p.Until = p.Until.UTC()
		v.StorePause = &p
	}
	if queued > 0 {
		if due, ok, err := eng.Store().NextDue(s.ID); err == nil && ok {
			due = due.UTC()
			v.NextAttempt = &due
		}
	}
	return v
}

func (a adminAPI) listSubscriptions(w http.ResponseWriter, eng *delivery.Engine) error {
	// One scan of the queue for every subscription, not one per
	// subscription.
	depths, err := eng.Store().QueueDepths()
	if err != nil {
		return apiErr(http.StatusInternalServerError, err.Error())
	}
	subs := eng.Subscriptions()
	out := make([]subscriptionJSON, 0, len(subs))
	for _, s := range subs {
		out = append(out, subscriptionView(eng, s, depths[s.ID]))
	}
	sortByID(out)
	return writeAdmin(w, out)
}

// limitParam reads a listing's ?limit=n: default 100, at most 10,000.
func limitParam(r *http.Request) (int, error) {
	v := r.URL.Query().Get("limit")
	if v == "" {
		return 100, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n <= 0 {
		return 0, apiErr(http.StatusBadRequest, "limit must be a positive number")
	}
	return min(n, 10000), nil
}

func (a adminAPI) listFailed(w http.ResponseWriter, r *http.Request, eng *delivery.Engine) error {
	limit, err := limitParam(r)
	if err != nil {
		return err
	}
	ds, err := eng.Store().FailedDeliveries(r.URL.Query().Get("subscription"), limit)
	if err != nil {
		return apiErr(http.StatusInternalServerError, err.Error())
	}
	type failedJSON struct {
		ID           string    `json:"id"`
		Subscription string    `json:"subscription"`
		MessageID    string    `json:"message_id"`
		Event        string    `json:"event"`
		Tenant       string    `json:"tenant,omitempty"`
		Attempts     int       `json:"attempts"`
		LastStatus   int       `json:"last_status,omitempty"`
		LastError    string    `json:"last_error,omitempty"`
		FailedAt     time.Time `json:"failed_at"`
	}
	out := make([]failedJSON, 0, len(ds))
	for _, d := range ds {
		out = append(out, failedJSON{d.ID, d.SubscriptionID, d.Message.ID, d.Message.Event, d.Message.Tenant,
			d.Attempts, d.LastStatus, d.LastError, d.UpdatedAt})
	}
	return writeAdmin(w, out)
}

// listAttempts shows a subscription's latest delivery attempts, newest
// first: what its receiver answered, which the subscription's health only
// sums up. Those of a subscription no longer configured or registered are
// listed too while they are retained.
func (a adminAPI) listAttempts(w http.ResponseWriter, r *http.Request, eng *delivery.Engine, id string) error {
	limit, err := limitParam(r)
	if err != nil {
		return err
	}
	atts, err := eng.RecentAttempts(id, limit)
	if err != nil {
		return apiErr(http.StatusInternalServerError, err.Error())
	}
	if _, ok := eng.Subscription(id); !ok && len(atts) == 0 {
		return noSubscription(eng, id, " and no attempts on record for it")
	}
	type attemptJSON struct {
		DeliveryID string    `json:"delivery_id"`
		MessageID  string    `json:"message_id"`
		Event      string    `json:"event"`
		Attempt    int       `json:"attempt"`
		At         time.Time `json:"at"`
		Status     int       `json:"status,omitempty"` // none without an answer
		Success    bool      `json:"success"`
		Error      string    `json:"error,omitempty"`
		LatencyMS  float64   `json:"latency_ms"`
	}
	out := make([]attemptJSON, 0, len(atts))
	for _, at := range atts {
		out = append(out, attemptJSON{at.DeliveryID, at.MessageID, at.Event, at.N, at.At, at.Status,
			at.Success, at.Error, delivery.Milliseconds(at.Duration)})
	}
	return writeAdmin(w, out)
}

// maxTestBody bounds the body of a test send: webhook_publish's default.
const maxTestBody = 1 << 20

// test sends sub a test event now, the way a delivery would, and reports
// what its receiver made of it; nothing is queued or recorded, and the
// subscription's health is left alone, so it also checks a disabled
// endpoint before it is enabled again.
func (a adminAPI) test(w http.ResponseWriter, r *http.Request, eng *delivery.Engine, sub *delivery.Subscription) error {
	body, err := io.ReadAll(io.LimitReader(r.Body, maxTestBody+1))
	if err != nil {
		return apiErr(http.StatusBadRequest, "reading the request body: "+err.Error())
	}
	if len(body) > maxTestBody {
		return apiErr(http.StatusRequestEntityTooLarge, fmt.Sprintf("request body larger than %d bytes", maxTestBody))
	}
	event, data, err := delivery.ParseTestSend(sub, bytes.TrimSpace(body), time.Now())
	if err != nil {
		return apiErr(http.StatusBadRequest, err.Error())
	}
	res := eng.Probe(sub, event, data)
	return writeAdmin(w, map[string]any{
		"subscription": sub.ID, "event": event, "success": res.Success, "status": res.Status,
		"latency_ms": delivery.Milliseconds(res.Latency), "error": res.Error,
	})
}

func onlyGet(r *http.Request, f func() error) error {
	if r.Method != http.MethodGet {
		return apiErr(http.StatusMethodNotAllowed, "method not allowed; use GET")
	}
	return f()
}

// writeFailure is the status of a write the store refused: 507 while it
// is low on disk space (the message says how low, and where), else 500.
func writeFailure(err error) int {
	if errors.Is(err, store.ErrLowSpace) {
		return http.StatusInsufficientStorage
	}
	return http.StatusInternalServerError
}

func apiErr(status int, msg string) error {
	return caddy.APIError{HTTPStatus: status, Err: errors.New(msg)}
}

func writeAdmin(w http.ResponseWriter, v any) error {
	w.Header().Set("Content-Type", "application/json")
	if err := json.NewEncoder(w).Encode(v); err != nil {
		return apiErr(http.StatusInternalServerError, fmt.Sprintf("encoding: %v", err))
	}
	return nil
}

// Interface guards
var (
	_ caddy.AdminRouter = adminAPI{}
	_ caddy.Provisioner = (*adminAPI)(nil)
)

func sortByID(s []subscriptionJSON) {
	slices.SortFunc(s, func(a, b subscriptionJSON) int { return strings.Compare(a.ID, b.ID) })
}
