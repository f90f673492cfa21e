package ingest

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"time"
	"unicode/utf8"
)

// Upstream is what the next handler made of a forwarded push.
type Upstream struct {
	// Status is the upstream's status code, or the status of the handler
	// error when Err is set; 0 when nothing answered at all.
	Status int
	Header http.Header
	Body   []byte
	// Err is the error the next handler returned (e.g. the upstream was
	// unreachable). It is never shown to the client.
	Err error
}

// Settled is the answer to a forwarded push plus what the operator should
// know about it.
type Settled struct {
	Answer
	// Detail explains a degraded outcome for the log (a store failure, an
	// unparsable override header); "" when there is nothing to add.
	Detail string
}

// Settle turns the upstream's answer into the client's, consuming the
// window when the upstream accepted the push, and releases the lease.
func (p *Push) Settle(up Upstream) Settled {
	defer p.Release()
	switch {
	case up.Err == nil && up.Status >= 200 && up.Status < 300:
		return p.accepted(up.Header)
	case up.Status >= 400 && up.Status < 500:
		return p.rejected(up)
	default:
		return p.settled(http.StatusBadGateway, OutcomeUpstreamError, p.window, MsgUpstreamPrefix+upstreamFault(up))
	}
}

func (p *Push) accepted(h http.Header) Settled {
	now := p.gate.clock.Now().UTC().Truncate(time.Second)
	w := Window{LastUsed: now, NextPushAfter: storable(now.Add(p.Client.Interval)), Interval: p.Client.Interval}
	w, detail := overrideWindow(w, h)
	if err := p.Client.lease.save(p.gate.windows, w); err != nil {
		// The upstream already has the data: answering an error now would
		// make the client push it again. Report it to the operator instead.
		detail = joinDetail(detail, err.Error())
	}
	s := p.settled(http.StatusOK, OutcomeAccepted, w, "")
	s.Envelope.Success = true
	s.Detail = detail
	return s
}

// rejected passes a 4xx on. The window stays as it was unless the upstream
// moved it explicitly with the override headers.
func (p *Push) rejected(up Upstream) Settled {
	w, detail := overrideWindow(p.window, up.Header)
	if w != p.window {
		if err := p.Client.lease.save(p.gate.windows, w); err != nil {
			detail = joinDetail(detail, err.Error())
		}
	}
	s := p.settled(up.Status, OutcomeUpstreamRejected, w, upstreamReason(up))
	s.Detail = detail
	return s
}

func (p *Push) settled(status int, o Outcome, w Window, msg string) Settled {
	s := Settled{Answer: Answer{Status: status, Outcome: o, Envelope: w.envelope(false, msg)}}
	s.from(p.Client)
	return s
}

// overrideWindow applies Webhook-Last-Used / Webhook-Next-Push-After. Each
// header overrides its own field only; a malformed value is ignored and
// reported.
func overrideWindow(w Window, h http.Header) (Window, string) {
	var detail string
	overrideTime(&w.LastUsed, h, HeaderUpstreamLastUsed, &detail)
	if overrideTime(&w.NextPushAfter, h, HeaderUpstreamNextAfter, &detail) {
		w.Interval = notByInterval // the upstream's word, whatever the interval
	}
	return w, detail
}

// overrideTime sets *field from header name and reports whether it did.
func overrideTime(field *time.Time, h http.Header, name string, detail *string) bool {
	v := strings.TrimSpace(h.Get(name))
	if v == "" {
		return false
	}
	t, err := time.Parse(time.RFC3339Nano, v)
	if err != nil {
		*detail = joinDetail(*detail, fmt.Sprintf("ignoring malformed %s header %q", name, v))
		return false
	}
	*field = storable(t.UTC())
	return true
}

// upstreamReason finds the upstream's own words for a rejection: the
// "error" or "message" of a JSON body, else a short plain-text body, else
// the status text.
func upstreamReason(up Upstream) string {
	if up.Err == nil {
		if msg := jsonReason(up.Body); msg != "" {
			return shortReason(msg)
		}
		if text := plainReason(up.Header, up.Body); text != "" {
			return text
		}
	}
	return strings.ToLower(http.StatusText(up.Status))
}

func jsonReason(body []byte) string {
	var obj map[string]json.RawMessage
	if json.Unmarshal(body, &obj) != nil {
		return ""
	}
	for _, field := range []string{"error", "message", "detail"} {
		raw, ok := obj[field]
		if !ok {
			continue
		}
		var s string
		if json.Unmarshal(raw, &s) == nil && s != "" {
			return s
		}
		var nested struct{ Message string }
		if json.Unmarshal(raw, &nested) == nil && nested.Message != "" {
			return nested.Message
		}
	}
	return ""
}

// maxReason bounds how much of the upstream's words become the error: a
// client gets its reason, not a dump of the upstream's body.
const maxReason = 300

// shortReason cuts text at maxReason bytes, never inside a character.
func shortReason(text string) string {
	if len(text) <= maxReason {
		return text
	}
	return strings.ToValidUTF8(text[:maxReason], "") + "…"
}

func plainReason(h http.Header, body []byte) string {
	if !strings.HasPrefix(h.Get("Content-Type"), "text/plain") || !utf8.Valid(body) {
		return ""
	}
	text, _, _ := strings.Cut(strings.TrimSpace(string(body)), "\n")
	return shortReason(strings.TrimSpace(text))
}

// upstreamFault describes a 5xx, 3xx or missing answer without exposing
// anything about the upstream's address.
func upstreamFault(up Upstream) string {
	if up.Err != nil || up.Status == 0 {
		return "no response from upstream"
	}
	return fmt.Sprintf("upstream answered %d %s", up.Status, http.StatusText(up.Status))
}

func joinDetail(a, b string) string {
	if a == "" {
		return b
	}
	return a + "; " + b
}
