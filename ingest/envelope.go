// Package ingest authenticates inbound webhook pushes and enforces each
// client's push window (the Divvy protocol). It has no Caddy imports: the
// adapter in caddywebhook calls Admit before forwarding a push upstream and
// Settle with what the upstream answered.
package ingest

import (
	"encoding/json"
	"time"
)

// Error messages of the protocol, exactly as clients see them.
const (
	MsgMethodNotAllowed = "method not allowed"
	MsgNotAuthorized    = "not authorized"
	MsgMissingToken     = "must supply webhook token in X-Webhook-Token header"
	MsgUnknownToken     = "unknown webhook token"
	MsgTooEarlyPrefix   = "next push not allowed until after "
	MsgInProgress       = "another push for this client is in progress"
	MsgBodyTooLarge     = "request body too large"
	MsgBodyNotObject    = "request body must be a JSON object"
	MsgUpstreamPrefix   = "upstream error: "
	MsgInternal         = "internal error"
)

// Header names of the protocol.
const (
	HeaderToken             = "X-Webhook-Token"
	HeaderClient            = "X-Webhook-Client"
	HeaderUpstreamLastUsed  = "Webhook-Last-Used"
	HeaderUpstreamNextAfter = "Webhook-Next-Push-After"
)

// Envelope is the JSON body of every answer. The time fields are left out
// when nothing is known about the client yet.
type Envelope struct {
	Success       bool   `json:"success"`
	Error         string `json:"error"`
	LastUsed      string `json:"last_used,omitempty"`
	NextPushAfter string `json:"next_push_after,omitempty"`
}

// Outcome names why an answer was given; it is meant for logs and metrics,
// never for the client.
type Outcome string

// Outcomes, one per row of the protocol table.
const (
	OutcomeAccepted         Outcome = "accepted"
	OutcomeMethodNotAllowed Outcome = "method_not_allowed"
	OutcomeNotAuthorized    Outcome = "not_authorized"
	OutcomeMissingToken     Outcome = "missing_token"
	OutcomeUnknownToken     Outcome = "unknown_token"
	OutcomeTooEarly         Outcome = "too_early"
	OutcomeInProgress       Outcome = "in_progress"
	OutcomeBodyTooLarge     Outcome = "body_too_large"
	OutcomeBodyNotObject    Outcome = "body_not_object"
	OutcomeUpstreamRejected Outcome = "upstream_rejected"
	OutcomeUpstreamError    Outcome = "upstream_error"
	OutcomeStoreError       Outcome = "store_error"
)

// Answer is what to send back to the pushing client.
type Answer struct {
	Status   int
	Envelope Envelope
	Outcome  Outcome
	// Client is the authenticated client's name, "" before authentication.
	Client string
}

// JSON encodes the envelope followed by a newline.
func (a Answer) JSON() []byte {
	b, _ := json.Marshal(a.Envelope) // only strings and a bool: cannot fail
	return append(b, '\n')
}

// FormatTime renders a time the way every envelope field does: RFC 3339 in
// UTC, with fractional seconds only when there are any.
func FormatTime(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339Nano)
}

func (w Window) envelope(success bool, msg string) Envelope {
	return Envelope{
		Success:       success,
		Error:         msg,
		LastUsed:      FormatTime(w.LastUsed),
		NextPushAfter: FormatTime(w.NextPushAfter),
	}
}
