package api

import (
	"encoding/base64"
	"net/http"
	"net/url"
	"slices"
	"strings"

	"github.com/hookgate/caddy-webhook/delivery"
)

// HeaderDoshiiLocation scopes a Doshii registration to one location.
const HeaderDoshiiLocation = "doshii-location-id"

type doshiiBody struct {
	Event               string  `json:"event"`
	WebhookURL          *string `json:"webhookUrl"`
	AuthenticationKey   *string `json:"authenticationKey"`
	AuthenticationToken *string `json:"authenticationToken"`
}

type doshiiWebhook struct {
	Event                 string `json:"event"`
	WebhookURL            string `json:"webhookUrl"`
	AuthenticationEnabled bool   `json:"authenticationEnabled"`
	WebhookLatency        int64  `json:"webhookLatency"`
	URI                   string `json:"uri"`
	UpdatedAt             string `json:"updatedAt"`
	CreatedAt             string `json:"createdAt"`
}

// doshii routes: /webhooks (POST, GET), /webhooks/{event} (GET, PUT,
// DELETE), and the operations of ops.go.
func (c *call) doshii() {
	switch len(c.r.Tail) {
	case 0:
		switch c.r.Method {
		case http.MethodPost:
			c.doshiiRegister()
		case http.MethodGet:
			c.doshiiList()
		default:
			c.methodNotAllowed("GET", "POST")
		}
	case 1:
		if c.r.Tail[0] == "attempts" {
			c.operation("")
			return
		}
		switch c.r.Method {
		case http.MethodGet:
			c.doshiiGet()
		case http.MethodPut:
			c.doshiiUpdate()
		case http.MethodDelete:
			c.doshiiDelete()
		default:
			c.methodNotAllowed("GET", "PUT", "DELETE")
		}
	default:
		c.operation(c.location())
	}
}

func (c *call) location() string { return strings.TrimSpace(c.r.Header.Get(HeaderDoshiiLocation)) }

func (c *call) doshiiRegister() {
	var b doshiiBody
	if !c.decode(&b) {
		return
	}
	if strings.TrimSpace(b.Event) == "" {
		c.fail(http.StatusBadRequest, "event is required")
		return
	}
	if b.WebhookURL == nil {
		c.fail(http.StatusBadRequest, "webhookUrl is required")
		return
	}
	loc, now := c.location(), c.now()
	sub := delivery.Subscription{
		ID: subID(Doshii, c.r.Tenant, loc, b.Event), Events: []string{b.Event}, Tenant: c.r.Tenant, Location: loc,
		Source: Doshii, CreatedAt: now, UpdatedAt: now,
	}
	if _, exists := c.h.Engine.Subscription(sub.ID); exists {
		c.conflict(sub)
		return
	}
	if !c.doshiiApply(&sub, b) || !c.create(&sub, true) {
		return
	}
	c.json(http.StatusOK, c.doshiiView(sub))
}

// doshiiApply sets URL and authentication from a body; on failure it has
// answered.
func (c *call) doshiiApply(sub *delivery.Subscription, b doshiiBody) bool {
	if b.WebhookURL != nil {
		if !validURL(*b.WebhookURL) {
			c.fail(http.StatusBadRequest, "webhookUrl must be an absolute http or https URL")
			return false
		}
		sub.URL = *b.WebhookURL
	}
	if b.AuthenticationKey == nil && b.AuthenticationToken == nil {
		return true
	}
	key, token := deref(b.AuthenticationKey), deref(b.AuthenticationToken)
	sub.Auth = delivery.Auth{}
	switch {
	case key != "" && token == "":
		c.fail(http.StatusBadRequest, "authenticationToken is required with authenticationKey")
		return false
	case delivery.HasControl(key) || delivery.HasControl(token):
		c.fail(http.StatusBadRequest, "authenticationKey and authenticationToken must not contain control characters")
		return false
	case strings.ContainsRune(key, ':'):
		// Basic authentication splits key and token at the first colon.
		c.fail(http.StatusBadRequest, "authenticationKey must not contain ':'")
		return false
	case key != "":
		sub.Auth.Authorization = "Basic " + base64.StdEncoding.EncodeToString([]byte(key+":"+token))
	case token != "":
		sub.Auth.Authorization = token
	}
	return true
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

func (c *call) doshiiView(s delivery.Subscription) doshiiWebhook {
	scheme := "https"
	if c.r.TLS == nil {
		scheme = "http"
	}
	u := url.URL{Scheme: scheme, Host: c.r.Host, Path: c.r.Base + "/" + s.Events[0]}
	return doshiiWebhook{
		Event: s.Events[0], WebhookURL: s.URL, AuthenticationEnabled: s.Auth.Authorization != "",
		WebhookLatency: s.LatencyMS, URI: u.String(),
		UpdatedAt: delivery.Timestamp(s.UpdatedAt),
		CreatedAt: delivery.Timestamp(s.CreatedAt),
	}
}

func (c *call) doshiiList() {
	out := []doshiiWebhook{}
	for _, s := range c.inScope() {
		out = append(out, c.doshiiView(s))
	}
	slices.SortFunc(out, func(a, b doshiiWebhook) int { return strings.Compare(a.Event, b.Event) })
	c.json(http.StatusOK, out)
}

// doshiiFind looks up /webhooks/{event} in the caller's location scope.
func (c *call) doshiiFind() (delivery.Subscription, bool) {
	sub, ok := c.h.Engine.Subscription(subID(Doshii, c.r.Tenant, c.location(), c.r.Tail[0]))
	if !ok {
		c.fail(http.StatusNotFound, "webhook not found")
	}
	return sub, ok
}

func (c *call) doshiiGet() {
	if sub, ok := c.doshiiFind(); ok {
		c.json(http.StatusOK, c.doshiiView(sub))
	}
}

func (c *call) doshiiUpdate() {
	var b doshiiBody
	if !c.decode(&b) {
		return
	}
	if b.Event != "" && b.Event != c.r.Tail[0] {
		c.fail(http.StatusBadRequest, "event in the body does not match the path")
		return
	}
	sub, ok := c.doshiiFind()
	if !ok || !c.doshiiApply(&sub, b) {
		return
	}
	sub.UpdatedAt = c.now()
	if !c.store(&sub, true, c.h.Engine.UpdateSubscription) {
		return
	}
	c.json(http.StatusOK, c.doshiiView(sub))
}

func (c *call) doshiiDelete() {
	sub, ok := c.doshiiFind()
	if !ok {
		return
	}
	if err := c.h.Engine.DeleteSubscription(sub.ID); err != nil {
		c.fail(http.StatusInternalServerError, "internal error")
		return
	}
	c.json(http.StatusOK, c.doshiiView(sub))
}
