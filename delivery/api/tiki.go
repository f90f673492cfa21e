package api

import (
	"errors"
	"net/http"
	"slices"
	"strings"

	"github.com/hookgate/caddy-webhook/delivery"
)

// Tiki's messages, as its documentation words them.
const (
	tikiInvalidURI = "Invalid URI"
	tikiConflict   = "Webhook for this event has been registered. Please update it instead."
	tikiNotFound   = "Webhook not found"
)

type tikiWebhook struct {
	URI   string `json:"uri"`
	Event string `json:"event"`
}

// tiki routes: /webhooks (POST, GET, PUT, DELETE ?event=),
// /webhooks/credentials (PUT), and the operations of ops.go.
func (c *call) tiki() {
	switch {
	case len(c.r.Tail) == 0:
		switch c.r.Method {
		case http.MethodPost:
			c.tikiRegister()
		case http.MethodGet:
			c.tikiList()
		case http.MethodPut:
			c.tikiUpdate()
		case http.MethodDelete:
			c.tikiDelete()
		default:
			c.methodNotAllowed("GET", "POST", "PUT", "DELETE")
		}
	case len(c.r.Tail) == 1 && c.r.Tail[0] == "credentials":
		if c.r.Method != http.MethodPut {
			c.methodNotAllowed("PUT")
			return
		}
		c.tikiCredentials()
	default:
		c.operation("")
	}
}

func (c *call) tikiBody() (tikiWebhook, bool) {
	var b tikiWebhook
	if !c.decode(&b) {
		return b, false
	}
	if strings.TrimSpace(b.Event) == "" {
		c.fail(http.StatusBadRequest, "event is required")
		return b, false
	}
	if !validURL(b.URI) {
		c.fail(http.StatusBadRequest, tikiInvalidURI)
		return b, false
	}
	return b, true
}

func (c *call) tikiSubscription(b tikiWebhook) (delivery.Subscription, error) {
	now := c.now()
	sub := delivery.Subscription{
		ID: subID(Tiki, c.r.Tenant, "", b.Event), URL: b.URI, Events: []string{b.Event},
		Tenant: c.r.Tenant, Source: Tiki, CreatedAt: now, UpdatedAt: now,
	}
	cred, ok, err := c.h.Engine.Credentials(Tiki, c.r.Tenant)
	if ok {
		sub.Auth.BasicUser, sub.Auth.BasicPassword = cred.ID, cred.Secret
	}
	return sub, err
}

func (c *call) tikiRegister() {
	b, ok := c.tikiBody()
	if !ok {
		return
	}
	sub, err := c.tikiSubscription(b)
	if err != nil {
		c.fail(http.StatusInternalServerError, "internal error")
		return
	}
	if _, exists := c.h.Engine.Subscription(sub.ID); exists {
		c.conflict(sub)
		return
	}
	if !c.create(&sub, c.h.Verify) {
		return
	}
	c.json(http.StatusOK, map[string]string{"seller_id": c.r.Tenant, "uri": sub.URL, "event": b.Event})
}

func (c *call) tikiList() {
	data := []tikiWebhook{}
	for _, s := range c.mine() {
		data = append(data, tikiWebhook{URI: s.URL, Event: s.Events[0]})
	}
	slices.SortFunc(data, func(a, b tikiWebhook) int { return strings.Compare(a.Event, b.Event) })
	c.json(http.StatusOK, map[string]any{"data": data})
}

func (c *call) tikiUpdate() {
	b, ok := c.tikiBody()
	if !ok {
		return
	}
	old, exists := c.h.Engine.Subscription(subID(Tiki, c.r.Tenant, "", b.Event))
	if !exists {
		c.fail(http.StatusNotFound, tikiNotFound)
		return
	}
	old.URL, old.UpdatedAt = b.URI, c.now()
	if !c.store(&old, c.h.Verify, c.h.Engine.UpdateSubscription) {
		return
	}
	c.json(http.StatusOK, tikiWebhook{URI: old.URL, Event: b.Event})
}

func (c *call) tikiDelete() {
	event := c.r.URL.Query().Get("event")
	if event == "" {
		c.fail(http.StatusBadRequest, "event query parameter is required")
		return
	}
	sub, exists := c.h.Engine.Subscription(subID(Tiki, c.r.Tenant, "", event))
	if !exists {
		c.fail(http.StatusNotFound, tikiNotFound)
		return
	}
	if err := c.h.Engine.DeleteSubscription(sub.ID); err != nil {
		c.fail(http.StatusInternalServerError, "internal error")
		return
	}
	c.json(http.StatusOK, tikiWebhook{URI: sub.URL, Event: event})
}

func (c *call) tikiCredentials() {
	var b delivery.Credentials
	if !c.decode(&b) {
		return
	}
	if err := b.Validate(); err != nil {
		c.fail(http.StatusBadRequest, err.Error())
		return
	}
	if err := c.h.Engine.SetCredentials(Tiki, c.r.Tenant, b); err != nil {
		c.storeFailed(err)
		return
	}
	c.json(http.StatusOK, map[string]string{"id": b.ID})
}

// store verifies (when asked) and saves a registration with put (the
// engine's Create or UpdateSubscription), telling it whether the URL was
// verified; on failure it has answered. A verification takes a while: put
// checks again that the subscription is new, or still there, when it
// stores it.
func (c *call) store(sub *delivery.Subscription, verify bool, put func(s delivery.Subscription, verified bool) error) bool {
	if err := delivery.ValidateSubscription(sub); err != nil {
		c.fail(http.StatusBadRequest, err.Error())
		return false
	}
	// Nothing is sent to the receiver for a webhook that cannot be stored.
	if err := c.h.Engine.Writable(); err != nil {
		c.storeFailed(err)
		return false
	}
	if verify && !c.verify(sub) {
		return false
	}
	switch err := put(*sub, verify); {
	case errors.Is(err, delivery.ErrSubscriptionExists):
		c.conflict(*sub)
		return false
	case errors.Is(err, delivery.ErrNoSubscription):
		c.fail(http.StatusNotFound, c.notFoundMessage())
		return false
	case errors.Is(err, delivery.ErrTooManySubscriptions):
		c.tooMany()
		return false
	case err != nil:
		c.storeFailed(err)
		return false
	}
	return true
}

// conflict answers a registration of an event already registered.
func (c *call) conflict(sub delivery.Subscription) {
	switch {
	case c.h.Dialect == Tiki:
		c.fail(http.StatusConflict, tikiConflict)
	case sub.Location == "":
		c.fail(http.StatusConflict, "only one global webhook may be registered for event "+sub.Events[0])
	default:
		c.fail(http.StatusConflict, "a webhook for event "+sub.Events[0]+" is already registered for this location")
	}
}
