package delivery

import (
	"encoding/json"
	"math"
	"time"
)

// testEvent is the event of a test send to a subscription that takes
// every event, when the sender names none.
const testEvent = "webhook.test"

// Milliseconds renders a latency as milliseconds to the microsecond, as
// the APIs report it.
func Milliseconds(d time.Duration) float64 { return math.Round(float64(d)/1e3) / 1e3 }

// Timestamp renders a time as the seeds write times, and so as the APIs
// and test events do: RFC 3339, UTC, milliseconds.
func Timestamp(t time.Time) string { return t.UTC().Format("2006-01-02T15:04:05.000Z07:00") }

// TestPayload is the data of a test event (Kinguin's "TEST URL", FlyBuy's
// "Send"): the event it stands for, that it is a test, and when it was
// sent (see Timestamp).
func TestPayload(event string, now time.Time) []byte {
	b, _ := json.Marshal(map[string]any{
		"event": event, "test": true, "sentAt": Timestamp(now),
	})
	return b
}

// ParseTestSend reads what an operator asks to send to sub as a test: an
// empty body for an example event, else a publish body with only `event`
// and `data`. The event must be one sub takes, so the receiver sees what
// a delivery could bring it. Errors are *PublishError, meant for the
// operator.
func ParseTestSend(sub *Subscription, body []byte, now time.Time) (event string, data []byte, err error) {
	if len(body) == 0 {
		event = sub.Events[0]
		if event == "*" {
			event = testEvent
		}
		return event, TestPayload(event, now), nil
	}
	msg, err := ParsePublish(body)
	if err != nil {
		return "", nil, err
	}
	if msg.ID != "" || msg.Tenant != "" || msg.Location != "" {
		return "", nil, publishErr("a test send takes only event and data: it goes to this subscription alone, now, and is not stored")
	}
	if !sub.Takes(msg.Event) {
		return "", nil, publishErr("subscription %s does not take event %q", sub.ID, msg.Event)
	}
	return msg.Event, msg.Data, nil
}
