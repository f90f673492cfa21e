// Package api serves the subscription registration API in the dialects
// that existing integrations speak: Tiki (seller webhooks) and Doshii
// (partner webhooks with optional locations and verification). It has no
// Caddy imports: the adapter passes the authenticated tenant and the path.
package api

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"math"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/hookgate/caddy-webhook/delivery"
	"github.com/hookgate/caddy-webhook/internal/httpbody"
	"github.com/hookgate/caddy-webhook/internal/store"
)

// Dialects.
const (
	Tiki   = "tiki"
	Doshii = "doshii"
)

// EventVerify is the event of a verification request.
const EventVerify = "webhook.verify"

// DefaultMaxBody bounds request bodies.
const DefaultMaxBody = 64 << 10

// DefaultMaxWebhooks bounds how many webhooks one tenant may register:
// each is held in memory and worked on by the engine, so without a bound
// one caller could register events by the million.
const DefaultMaxWebhooks = 1000

// Engine is what the API needs of the delivery engine.
type Engine interface {
	Subscription(id string) (delivery.Subscription, bool)
	TenantSubscriptions(source, tenant string) []delivery.Subscription
	CreateSubscription(sub delivery.Subscription, limit int) error
	Registered(source, tenant string) int
	UpdateSubscription(sub delivery.Subscription, verified bool) error
	DeleteSubscription(id string) error
	Probe(sub *delivery.Subscription, event string, data []byte) delivery.ProbeResult
	RecentAttempts(subID string, limit int) ([]delivery.Attempt, error)
	Health(subID string) (delivery.Health, error)
	Enable(subID string) error
	Redeliver(subID string) (int, error)
	RetryNow(ctx context.Context, subID string) (int, error)
	Credentials(source, tenant string) (delivery.Credentials, bool, error)
	SetCredentials(source, tenant string, c delivery.Credentials) error
	// Writable is nil while registrations can be stored (see
	// delivery.Engine.Writable).
	Writable() error
}

// Handler serves one dialect.
type Handler struct {
	Engine  Engine
	Dialect string
	// Verify sends a webhook.verify request before storing a registration;
	// always on for Doshii.
	Verify  bool
	MaxBody int64
	// MaxWebhooks bounds the webhooks of one tenant; 0 is
	// DefaultMaxWebhooks, negative no bound.
	MaxWebhooks int
	Now         func() time.Time
}

// Request is one API call as the adapter hands it over.
type Request struct {
	*http.Request
	// Tenant is the authenticated caller; every read and write is
	// confined to it.
	Tenant string
	// Base is the URL path up to and including the "webhooks" segment.
	Base string
	// Tail is the path below Base, split into unescaped segments.
	Tail []string
}

// SplitPath finds the API's part of a request path, whatever prefix the
// route has: the last "webhooks" segment followed by at most two more.
func SplitPath(escapedPath string) (base string, tail []string, ok bool) {
	segs := strings.Split(strings.Trim(escapedPath, "/"), "/")
	for i := len(segs) - 1; i >= 0 && len(segs)-1-i <= 2; i-- {
		if segs[i] != "webhooks" {
			continue
		}
		for _, s := range segs[i+1:] {
			u, err := url.PathUnescape(s)
			if err != nil || u == "" {
				return "", nil, false
			}
			tail = append(tail, u)
		}
		return "/" + strings.Join(segs[:i+1], "/"), tail, true
	}
	return "", nil, false
}

// ServeHTTP answers one call.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r Request) {
	c := &call{h: h, w: w, r: r}
	switch h.Dialect {
	case Tiki:
		c.tiki()
	case Doshii:
		c.doshii()
	default:
		c.fail(http.StatusInternalServerError, "unknown dialect")
	}
}

// call is one request being answered.
type call struct {
	h *Handler
	w http.ResponseWriter
	r Request
}

func (c *call) now() time.Time {
	if c.h.Now != nil {
		return c.h.Now().UTC()
	}
	return time.Now().UTC()
}

// fail answers with the dialect's error shape.
func (c *call) fail(status int, msg string) {
	if c.h.Dialect == Doshii {
		c.json(status, map[string]string{"message": msg})
		return
	}
	c.json(status, map[string]any{"error": map[string]string{"message": msg}})
}

// storeFailed answers a write the engine refused: 507 while the store is
// low on disk space, which the caller may retry later, 500 otherwise.
func (c *call) storeFailed(err error) {
	if errors.Is(err, store.ErrLowSpace) {
		c.w.Header().Set("Retry-After", delivery.LowSpaceRetryAfter)
		c.fail(http.StatusInsufficientStorage, delivery.MsgLowSpace)
		return
	}
	c.fail(http.StatusInternalServerError, "internal error")
}

func (c *call) methodNotAllowed(allowed ...string) {
	c.w.Header().Set("Allow", strings.Join(allowed, ", "))
	c.fail(http.StatusMethodNotAllowed, "method not allowed")
}

func (c *call) json(status int, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		status, body = http.StatusInternalServerError, []byte(`{"message":"internal error"}`)
	}
	body = append(body, '\n')
	h := c.w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	h.Set("Cache-Control", "no-store")
	c.w.WriteHeader(status)
	_, _ = c.w.Write(body)
}

// decode reads a JSON object body, compressed with gzip or deflate or
// not, into v; on failure it has answered.
func (c *call) decode(v any) bool {
	limit := c.h.MaxBody
	if limit <= 0 {
		limit = DefaultMaxBody
	}
	body, err := httpbody.Read(c.w, c.r.Request, limit)
	var tooLarge *http.MaxBytesError
	switch {
	case errors.As(err, &tooLarge):
		c.fail(http.StatusRequestEntityTooLarge, "request body too large")
		return false
	case errors.Is(err, httpbody.ErrUnsupportedEncoding):
		c.w.Header().Set("Accept-Encoding", httpbody.Accepted)
		c.fail(http.StatusUnsupportedMediaType, "unsupported content encoding")
		return false
	case err != nil:
		c.fail(http.StatusBadRequest, "request body could not be read")
		return false
	}
	if t := strings.TrimSpace(string(body)); t == "" || t[0] != '{' {
		c.fail(http.StatusBadRequest, "request body must be a JSON object")
		return false
	}
	if err := json.Unmarshal(body, v); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			c.fail(http.StatusBadRequest, te.Field+" must be a "+te.Type.Kind().String())
		} else {
			c.fail(http.StatusBadRequest, "malformed JSON")
		}
		return false
	}
	return true
}

// subID names a registration: the same tenant, location and event always
// give the same subscription, and no other tenant can address it.
func subID(dialect, tenant, location, event string) string {
	sum := sha256.Sum256([]byte(tenant + "\x00" + location + "\x00" + event))
	return dialect + ":" + hex.EncodeToString(sum[:16])
}

// mine returns the caller's registrations of this dialect.
func (c *call) mine() []delivery.Subscription {
	return c.h.Engine.TenantSubscriptions(c.h.Dialect, c.r.Tenant)
}

// inScope is the caller's webhooks, for Doshii only those of the location
// the request names in its doshii-location-id header, if it names one.
func (c *call) inScope() []delivery.Subscription {
	subs := c.mine()
	if c.h.Dialect != Doshii || c.r.Header.Get(HeaderDoshiiLocation) == "" {
		return subs
	}
	loc := c.location()
	return slices.DeleteFunc(subs, func(s delivery.Subscription) bool { return s.Location != loc })
}

// validURL is the dialects' notion of a usable webhook URL.
func validURL(raw string) bool { return delivery.ValidateURL(raw) == nil }

// verify sends a webhook.verify request; on failure it has answered 400.
func (c *call) verify(sub *delivery.Subscription) bool {
	data, _ := json.Marshal(map[string]any{"event": EventVerify, "url": sub.URL, "sentAt": c.now()})
	res := c.h.Engine.Probe(sub, EventVerify, data)
	if !res.Success {
		c.fail(http.StatusBadRequest, "webhook verification failed: "+res.Error)
		return false
	}
	// Whole milliseconds, rounded up: a fast receiver shows 1, not 0.
	sub.LatencyMS = int64(math.Ceil(float64(res.Latency) / float64(time.Millisecond)))
	return true
}

// maxWebhooks is the bound on one tenant's webhooks; 0 for none.
func (h *Handler) maxWebhooks() int {
	switch {
	case h.MaxWebhooks == 0:
		return DefaultMaxWebhooks
	case h.MaxWebhooks < 0:
		return 0
	}
	return h.MaxWebhooks
}

// create registers a new webhook, verifying it first when asked; on
// failure it has answered. A caller at its bound is refused before its
// URL is sent anything, and again when storing, which counts under the
// engine's lock, so concurrent registrations cannot pass it together.
func (c *call) create(sub *delivery.Subscription, verify bool) bool {
	limit := c.h.maxWebhooks()
	if limit > 0 && c.h.Engine.Registered(sub.Source, sub.Tenant) >= limit {
		c.tooMany()
		return false
	}
	return c.store(sub, verify, func(s delivery.Subscription, _ bool) error {
		return c.h.Engine.CreateSubscription(s, limit)
	})
}

func (c *call) tooMany() {
	c.fail(http.StatusBadRequest, "too many webhooks: at most "+strconv.Itoa(c.h.maxWebhooks())+" may be registered")
}
