// Package ingest authenticates inbound webhook pushes and enforces each
// client's push window (the Divvy protocol). It has no Caddy imports: the
// adapter in caddywebhook calls Admit before forwarding a push upstream and
// Settle with what the upstream answered.
package ingest

import (
	"encoding/json"
	"strconv"
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
	MsgBodyUnreadable   = "request body could not be read"
	// MsgUnsupportedEncoding: a Content-Encoding other than gzip or
	// deflate, or more than two of them.
	MsgUnsupportedEncoding = "unsupported content encoding"
	MsgUpstreamPrefix      = "upstream error: "
	MsgInternal            = "internal error"
	MsgUnavailable         = "service unavailable"
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
	// OutcomeBodyUnreadable: the body broke off (the client went away, a
	// read timeout) before it ended. Answered 400.
	OutcomeBodyUnreadable Outcome = "body_unreadable"
	// OutcomeUnsupportedEncoding: a body in a Content-Encoding that
	// cannot be undone to check it.
	OutcomeUnsupportedEncoding Outcome = "unsupported_encoding"
	OutcomeUpstreamRejected    Outcome = "upstream_rejected"
	OutcomeUpstreamError       Outcome = "upstream_error"
	OutcomeStoreError          Outcome = "store_error"
	// OutcomeStoreFull: the store cannot take the window now (low on disk
	// space), so the push was not forwarded. Answered 503.
	OutcomeStoreFull Outcome = "store_full"
)

// Answer is what to send back to the pushing client.
type Answer struct {
	Status   int
	Envelope Envelope
	Outcome  Outcome
	// Client is the authenticated client's name, "" before authentication.
	Client string
	// PreviousKey: the client authenticated with one of its previous keys,
	// which the operator wants to know before retiring them.
	PreviousKey bool
}

// from names the authenticated client c in the answer.
func (a *Answer) from(c Client) { a.Client, a.PreviousKey = c.Name, c.previousKey }

// JSON encodes the envelope followed by a newline.
func (a Answer) JSON() []byte { return a.AppendJSON(nil) }

// AppendJSON appends what JSON returns to b. Every answer goes through it,
// so it writes the four fields itself instead of through reflection; the
// bytes are exactly encoding/json's (a test compares them).
func (a Answer) AppendJSON(b []byte) []byte {
	e := a.Envelope
	b = append(b, `{"success":`...)
	b = strconv.AppendBool(b, e.Success)
	b = append(b, `,"error":`...)
	b = appendJSONString(b, e.Error)
	if e.LastUsed != "" {
		b = append(b, `,"last_used":`...)
		b = appendJSONString(b, e.LastUsed)
	}
	if e.NextPushAfter != "" {
		b = append(b, `,"next_push_after":`...)
		b = appendJSONString(b, e.NextPushAfter)
	}
	return append(b, "}\n"...)
}

// appendJSONString quotes s as encoding/json does. Protocol messages and
// times are plain ASCII and are copied; anything else (an upstream's own
// words) is left to encoding/json, with its escaping of <, > and &.
func appendJSONString(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x7f || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			q, _ := json.Marshal(s) // a string cannot fail to encode
			return append(b, q...)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
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
