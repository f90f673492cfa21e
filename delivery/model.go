// Package delivery is the outbound engine: subscriptions, a durable queue
// in badger, workers that deliver each message to every matching
// subscriber with retries, and endpoint health. It has no Caddy imports.
package delivery

import (
	"encoding/json"
	"slices"
	"time"
)

// Subscription is where and how to deliver events.
type Subscription struct {
	// ID is unique across static and registered subscriptions; static ones
	// are "static:<name>".
	ID     string   `json:"id"`
	Name   string   `json:"name,omitempty"`
	URL    string   `json:"url"`
	Events []string `json:"events"` // "*" matches every event
	Tenant string   `json:"tenant,omitempty"`
	// Location limits the subscription to one location; "" = global.
	Location string `json:"location,omitempty"`
	Auth     Auth   `json:"auth"`
	// Envelope "data" wraps the payload as {"data": …}; "" sends it raw.
	Envelope string `json:"envelope,omitempty"`
	// Source is "static" for subscriptions of the config, else the API
	// dialect that registered it.
	Source string `json:"source,omitempty"`
	// LatencyMS is the round trip of the verification request, if any.
	LatencyMS int64     `json:"latency_ms,omitempty"`
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`
}

// Auth is how a delivery proves where it comes from. Any combination may
// be set; each adds its own headers.
type Auth struct {
	// SecretHeader/Secret: a shared secret in a header of its own (Kinguin's
	// X-Event-Secret).
	SecretHeader string `json:"secret_header,omitempty"`
	Secret       string `json:"secret,omitempty"`
	// Token: Authorization: Token token="<token>" (FlyBuy).
	Token string `json:"token,omitempty"`
	// BasicUser/BasicPassword: Authorization: Basic (Tiki, Doshii).
	BasicUser     string `json:"basic_user,omitempty"`
	BasicPassword string `json:"basic_password,omitempty"`
	// Authorization is sent verbatim as the Authorization header (Doshii's
	// token-only authentication).
	Authorization string `json:"authorization,omitempty"`
	// SigningSecret ("whsec_<base64>") adds Standard Webhooks signature
	// headers.
	SigningSecret string `json:"signing_secret,omitempty"`
	// PreviousSigningSecrets sign every delivery as well, for rotation:
	// webhook-signature then lists one signature per secret, and a
	// receiver accepts the message when any of them verifies with the
	// secret it has.
	PreviousSigningSecrets []string `json:"previous_signing_secrets,omitempty"`
}

// signingSecrets returns every secret a delivery is signed with, the
// current one first.
func (a *Auth) signingSecrets() []string {
	if a.SigningSecret == "" {
		return nil
	}
	return append([]string{a.SigningSecret}, a.PreviousSigningSecrets...)
}

// Matches reports whether the subscription wants msg.
func (s *Subscription) Matches(msg *Message) bool {
	if s.Tenant != msg.Tenant {
		return false
	}
	if s.Location != "" && s.Location != msg.Location {
		return false
	}
	return s.Takes(msg.Event)
}

// Takes reports whether the subscription's events include event.
func (s *Subscription) Takes(event string) bool {
	return slices.Contains(s.Events, "*") || slices.Contains(s.Events, event)
}

// Message is one published event.
type Message struct {
	ID        string          `json:"id"`
	Event     string          `json:"event"`
	Tenant    string          `json:"tenant,omitempty"`
	Location  string          `json:"location,omitempty"`
	Data      json.RawMessage `json:"data,omitempty"`
	CreatedAt time.Time       `json:"created_at"`
}

// State of a delivery.
type State string

// Delivery states.
const (
	StatePending   State = "pending"
	StateDelivered State = "delivered"
	// StateFailed: every attempt of the retry schedule failed.
	StateFailed State = "failed"
)

// Delivery is one message on its way to one subscription. It carries the
// message so an attempt needs a single read.
type Delivery struct {
	ID             string    `json:"id"`
	SubscriptionID string    `json:"subscription_id"`
	Message        Message   `json:"message"`
	State          State     `json:"state"`
	Attempts       int       `json:"attempts"`
	NextAttempt    time.Time `json:"next_attempt,omitzero"`
	LastStatus     int       `json:"last_status,omitempty"`
	LastError      string    `json:"last_error,omitempty"`
	CreatedAt      time.Time `json:"created_at"`
	UpdatedAt      time.Time `json:"updated_at"`

	// payloadRef names the payload stored once for all the deliveries of a
	// large fan-out (see sharedPayload); "" when the delivery's records
	// carry the payload themselves.
	payloadRef string
	// queueOnly: the delivery has no record (d/<id>) while it is pending,
	// nor once delivered; its queue entry is all there is of it. The
	// deliveries of a message published without an ID are queue-only:
	// nothing looks them up by ID (see Engine.Publish), and a record
	// written when they were queued and again when they were delivered
	// doubled what a delivery cost the store. A failed delivery has a
	// record (for its redelivery), and keeps it from then on.
	queueOnly bool
}

// Attempt records one try at a delivery.
type Attempt struct {
	DeliveryID     string        `json:"delivery_id"`
	SubscriptionID string        `json:"subscription_id"`
	MessageID      string        `json:"message_id"`
	Event          string        `json:"event"`
	N              int           `json:"n"`
	At             time.Time     `json:"at"`
	Status         int           `json:"status,omitempty"`
	Error          string        `json:"error,omitempty"`
	Duration       time.Duration `json:"duration"`
	Success        bool          `json:"success"`
}

// Health is an endpoint's record of failures.
type Health struct {
	// FailingSince is the first failure after the last success; zero while
	// the endpoint is healthy.
	FailingSince time.Time `json:"failing_since,omitzero"`
	LastSuccess  time.Time `json:"last_success,omitzero"`
	Disabled     bool      `json:"disabled,omitempty"`
	DisabledAt   time.Time `json:"disabled_at,omitzero"`
	Reason       string    `json:"reason,omitempty"`
	// EnabledAt is when an operator last re-enabled the endpoint; failures
	// of attempts started before it do not count against it.
	EnabledAt time.Time `json:"enabled_at,omitzero"`
	// URL is where the failures recorded here happened, so that a static
	// subscription given another URL starts afresh (see reviewStatic). It is
	// stored but not part of the JSON shown to operators: a URL may carry
	// a secret.
	URL string `json:"-"`
}

// deliveryID is deterministic so that publishing the same message again
// (after a crash before the answer) rewrites rather than duplicates.
func deliveryID(msgID, subID string) string { return msgID + "|" + subID }
