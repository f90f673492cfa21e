package api

import (
	"errors"
	"net/http"
	"slices"
	"strconv"

	"github.com/hookgate/caddy-webhook/delivery"
)

// maxAttempts bounds a list of attempts.
const maxAttempts = 500

// operation serves what both dialects offer beside registration:
//
//	GET  …/webhooks/attempts            recent attempts of all the caller's webhooks
//	                                    (Doshii: of the location's, if the request names one)
//	GET  …/webhooks/{event}/attempts    recent attempts of one
//	POST …/webhooks/{event}/test        send a test event, report status and latency
//	POST …/webhooks/{event}/enable      re-enable a disabled webhook
//	POST …/webhooks/{event}/redeliver   queue its failed deliveries again
//	POST …/webhooks/{event}/retry       make its pending deliveries due now
func (c *call) operation(location string) {
	tail := c.r.Tail
	if len(tail) == 1 && tail[0] == "attempts" {
		if c.r.Method != http.MethodGet {
			c.methodNotAllowed("GET")
			return
		}
		c.attempts(c.inScope())
		return
	}
	if len(tail) != 2 {
		c.fail(http.StatusNotFound, "not found")
		return
	}
	op, wantMethod := tail[1], http.MethodPost
	if op == "attempts" {
		wantMethod = http.MethodGet
	}
	if !slices.Contains([]string{"attempts", "test", "enable", "redeliver", "retry"}, op) {
		c.fail(http.StatusNotFound, "not found")
		return
	}
	if c.r.Method != wantMethod {
		c.methodNotAllowed(wantMethod)
		return
	}
	sub, ok := c.h.Engine.Subscription(subID(c.h.Dialect, c.r.Tenant, location, tail[0]))
	if !ok {
		c.fail(http.StatusNotFound, c.notFoundMessage())
		return
	}
	switch op {
	case "attempts":
		c.attempts([]delivery.Subscription{sub})
	case "test":
		c.test(sub)
	case "enable":
		if err := c.h.Engine.Enable(sub.ID); err != nil {
			c.fail(http.StatusInternalServerError, "internal error")
			return
		}
		c.json(http.StatusOK, c.names(map[string]any{"event": tail[0], "enabled": true}))
	case "redeliver":
		n, err := c.h.Engine.Redeliver(sub.ID)
		if err != nil {
			c.storeFailed(err)
			return
		}
		c.json(http.StatusOK, c.names(map[string]any{"event": tail[0], "redelivered": n}))
	case "retry":
		n, err := c.h.Engine.RetryNow(c.r.Context(), sub.ID)
		switch {
		case errors.Is(err, delivery.ErrQueueHeld), errors.Is(err, delivery.ErrAttemptsInFlight):
			c.fail(http.StatusConflict, err.Error())
		case err != nil:
			c.storeFailed(err)
		default:
			c.json(http.StatusOK, c.names(map[string]any{"event": tail[0], "rescheduled": n}))
		}
	}
}

// limit reads ?limit=n: default 100, at most maxAttempts. A value that is
// not a positive number is refused rather than ignored, so that a caller
// paging through attempts learns of its mistake.
func (c *call) limit() (int, bool) {
	v := c.r.URL.Query().Get("limit")
	if v == "" {
		return 100, true
	}
	n, err := strconv.Atoi(v)
	if err != nil || n <= 0 {
		c.fail(http.StatusBadRequest, "limit must be a positive number")
		return 0, false
	}
	return min(n, maxAttempts), true
}

func (c *call) notFoundMessage() string {
	if c.h.Dialect == Tiki {
		return tikiNotFound
	}
	return "webhook not found"
}

// test sends an example event the way a delivery would and reports what
// the receiver made of it (Kinguin's "TEST URL", FlyBuy's "Send").
func (c *call) test(sub delivery.Subscription) {
	event := sub.Events[0]
	res := c.h.Engine.Probe(&sub, event, delivery.TestPayload(event, c.now()))
	c.json(http.StatusOK, c.names(map[string]any{
		"event": event, "success": res.Success, "status": res.Status,
		"latency_ms": delivery.Milliseconds(res.Latency), "error": res.Error,
	}))
}

func (c *call) attempts(subs []delivery.Subscription) {
	limit, ok := c.limit()
	if !ok {
		return
	}
	var all []delivery.Attempt
	locations := make(map[string]string, len(subs))
	for _, s := range subs {
		locations[s.ID] = s.Location
		a, err := c.h.Engine.RecentAttempts(s.ID, limit)
		if err != nil {
			c.fail(http.StatusInternalServerError, "internal error")
			return
		}
		all = append(all, a...)
	}
	slices.SortFunc(all, func(a, b delivery.Attempt) int { return b.At.Compare(a.At) })
	all = all[:min(len(all), limit)]
	out := make([]map[string]any, 0, len(all))
	for _, a := range all {
		m := map[string]any{
			"event": a.Event, "message_id": a.MessageID, "attempt": a.N,
			"at": delivery.Timestamp(a.At), "status": a.Status,
			"success": a.Success, "error": a.Error, "latency_ms": delivery.Milliseconds(a.Duration),
		}
		// A Doshii event may have a global webhook and one per location:
		// the location tells their attempts apart.
		if loc := locations[a.SubscriptionID]; loc != "" {
			m["location"] = loc
		}
		out = append(out, c.names(m))
	}
	c.json(http.StatusOK, map[string]any{"data": out})
}

// names renders field names in the dialect's style: Tiki uses snake_case,
// Doshii camelCase (latency as webhookLatency, like its registrations).
func (c *call) names(m map[string]any) map[string]any {
	if c.h.Dialect != Doshii {
		return m
	}
	rename := map[string]string{"message_id": "messageId", "latency_ms": "webhookLatency", "location": "locationId"}
	out := make(map[string]any, len(m))
	for k, v := range m {
		if n, ok := rename[k]; ok {
			k = n
		}
		out[k] = v
	}
	return out
}
