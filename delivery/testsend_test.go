package delivery

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestParseTestSend(t *testing.T) {
	now := time.Date(2026, 11, 24, 9, 30, 0, 123e6, time.FixedZone("x", 3600))
	shop := &Subscription{ID: "static:shop", Events: []string{"order.status", "product.update"}}
	all := &Subscription{ID: "static:all", Events: []string{"*"}}

	for _, c := range []struct {
		sub         *Subscription
		body, event string
	}{
		{shop, "", "order.status"},
		{all, "", "webhook.test"},
	} {
		event, data, err := ParseTestSend(c.sub, []byte(c.body), now)
		var got map[string]any
		if err != nil || event != c.event || json.Unmarshal(data, &got) != nil {
			t.Fatalf("%s, empty body: %q %s %v", c.sub.ID, event, data, err)
		}
		if got["event"] != c.event || got["test"] != true || got["sentAt"] != "2026-11-24T08:30:00.123Z" {
			t.Errorf("%s: example payload %s", c.sub.ID, data)
		}
	}

	event, data, err := ParseTestSend(all, []byte(`{"event":"refund.created","data":{ "id": 7 }}`), now)
	if err != nil || event != "refund.created" || string(data) != `{"id":7}` {
		t.Errorf("own payload: %q %s %v", event, data, err)
	}

	for body, want := range map[string]string{
		`{"event":"refund.created","data":{}}`:             `subscription static:shop does not take event "refund.created"`,
		`{"event":"order.status","tenant":"t","data":{}}`:  "a test send takes only event and data",
		`{"event":"order.status","location":"l","data":1}`: "data must be a JSON object or array",
		`{"event":"order.status","id":"i","data":{}}`:      "a test send takes only event and data",
		`{"data":{}}`:                      "event is required",
		`{"event":"order.status","data":{`: "invalid JSON",
		`[1]`:                              "request body must be a JSON object",
	} {
		_, _, err := ParseTestSend(shop, []byte(body), now)
		var pe *PublishError
		if !errors.As(err, &pe) || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want %q", body, err, want)
		}
	}
}
