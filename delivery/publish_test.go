package delivery

import (
	"encoding/base64"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/hookgate/caddy-webhook/internal/store"
)

func TestParsePublish(t *testing.T) {
	m, err := ParsePublish([]byte(` {"event":"order.status","tenant":"t1","location":"l1","id":"o-1",
		"data": { "orderId" : "PHS84FJAG5U", "status": "canceled" } } `))
	if err != nil {
		t.Fatal(err)
	}
	if m.Event != "order.status" || m.Tenant != "t1" || m.Location != "l1" || m.ID != "o-1" || string(m.Data) != `{"orderId":"PHS84FJAG5U","status":"canceled"}` {
		t.Fatalf("%+v data=%s", m, m.Data)
	}
	if m, err := ParsePublish([]byte(`{"event":"e","data":[1,2]}`)); err != nil || string(m.Data) != "[1,2]" {
		t.Fatalf("array data: %+v %v", m, err)
	}
}

func TestParsePublishErrors(t *testing.T) {
	cases := map[string]string{
		``:                                       "request body must be a JSON object",
		`[1]`:                                    "request body must be a JSON object",
		`{"event":"e","data":{}`:                 "invalid JSON: unexpected end of input",
		`{"event":"e","data":{}} {}`:             "unexpected data after the object",
		`{"event":"e","data":{},"evnt":"x"}`:     `invalid JSON: json: unknown field "evnt"`,
		`{"event":7,"data":{}}`:                  "invalid JSON: event must be a string",
		`{"data":{}}`:                            "event is required",
		`{"event":"","data":{}}`:                 "event is required",
		`{"event":"e"}`:                          "data is required",
		`{"event":"e","data":null}`:              "data is required",
		`{"event":"e","data":"text"}`:            "data must be a JSON object or array",
		`{"event":"e","data":42}`:                "data must be a JSON object or array",
		`{"event":"a|b","data":{}}`:              "event must not contain control characters or '|'",
		`{"event":"e","id":"x\u0000","data":{}}`: "id must not contain control characters",
	}
	cases[`{"event":"e","tenant":"`+strings.Repeat("t", 201)+`","data":{}}`] = "tenant is longer than 200 bytes"
	for in, want := range cases {
		_, err := ParsePublish([]byte(in))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: err = %v, want %q", in, err, want)
		}
		if _, ok := err.(*PublishError); err != nil && !ok {
			t.Errorf("%q: %T is not a PublishError", in, err)
		}
	}
}

func TestNewIDSortsByTime(t *testing.T) {
	a, b := NewID("msg_", t0), NewID("msg_", t0.Add(time.Millisecond))
	if !(a < b) || len(a) != 4+26 || a == NewID("msg_", t0) {
		t.Fatalf("%s %s", a, b)
	}
}

func TestValidateSubscription(t *testing.T) {
	validSecret := "whsec_" + base64.StdEncoding.EncodeToString([]byte("0123456789abcdef"))
	ok := Subscription{ID: "static:a", URL: "https://example.com/hook", Events: []string{"*"}}
	for _, tc := range []struct {
		mut  func(*Subscription)
		want string
	}{
		{func(s *Subscription) { s.URL = "ftp://example.com" }, "absolute http or https URL"},
		{func(s *Subscription) { s.URL = "/relative" }, "absolute http or https URL"},
		{func(s *Subscription) { s.URL = "http://:80/x" }, "absolute http or https URL"},
		{func(s *Subscription) { s.Events = nil }, "at least one event"},
		{func(s *Subscription) { s.Envelope = "wrap" }, `unknown envelope "wrap"`},
		{func(s *Subscription) { s.Auth.SecretHeader = "X-Event-Secret" }, "secret_header needs both"},
		{func(s *Subscription) { s.Auth.Token, s.Auth.BasicUser = "t", "u" }, "token and basic both set the Authorization header"},
		{func(s *Subscription) { s.Auth.SigningSecret = "not-a-whsec-secret" }, `must start with "whsec_"`},
		{func(s *Subscription) { s.Auth.SigningSecret = "whsec_c2hvcnQ=" }, "at least 16 bytes"},
		{func(s *Subscription) { s.Auth.PreviousSigningSecrets = []string{validSecret} }, "need a current signing secret"},
		{func(s *Subscription) {
			s.Auth.SigningSecret, s.Auth.PreviousSigningSecrets = validSecret, []string{validSecret, "not-a-whsec-secret"}
		}, `previous signing secret #2: must start with "whsec_"`},
		{func(s *Subscription) { s.Auth.SecretHeader, s.Auth.Secret = "X Event Secret", "s3cret-value" }, `secret_header "X Event Secret" is not a valid header name`},
		{func(s *Subscription) { s.Auth.SecretHeader, s.Auth.Secret = "content-length", "s3cret-value" }, "secret_header Content-Length is set by the delivery itself"},
		{func(s *Subscription) { s.Auth.SecretHeader, s.Auth.Secret = "Webhook-Id", "s3cret-value" }, "secret_header Webhook-Id is set by the delivery itself"},
		{func(s *Subscription) {
			s.Auth.SecretHeader, s.Auth.Secret = "X-Event-Secret", "s3cret-value\nX-Other: 1"
		}, "the secret of secret_header X-Event-Secret must not contain control characters"},
		{func(s *Subscription) {
			s.Auth.SecretHeader, s.Auth.Secret, s.Auth.Token = "authorization", "Bearer s3cret-value", "t"
		}, "secret_header Authorization and the subscription's other authentication"},
		{func(s *Subscription) { s.Auth.Token = `s3cret-value"` }, `token must not contain control characters, '"'`},
		{func(s *Subscription) { s.Auth.Token = `s3cret-value\` }, `token must not contain control characters, '"' or '\'`},
		{func(s *Subscription) { s.Auth.Token = "s3cret-value\r\n" }, "token must not contain control characters"},
		{func(s *Subscription) { s.Auth.Authorization = "s3cret-value\n" }, "the authorization value must not contain control characters"},
		{func(s *Subscription) { s.Auth.BasicUser, s.Auth.BasicPassword = "s3cret-value:x", "p" }, "the basic user id must not contain ':'"},
		{func(s *Subscription) { s.Auth.BasicUser, s.Auth.BasicPassword = "u", "s3cret-value\x00" }, "must not contain control characters"},
	} {
		s := ok
		tc.mut(&s)
		err := ValidateSubscription(&s)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("err = %v, want %q", err, tc.want)
		}
		if err != nil && (strings.Contains(err.Error(), "not-a-whsec-secret") || strings.Contains(err.Error(), "s3cret")) {
			t.Errorf("error quotes the secret: %v", err)
		}
	}
	if err := ValidateSubscription(&ok); err != nil {
		t.Fatal(err)
	}
	// What the checks leave alone: a Bearer token in a secret header of
	// its own, a colon in a password, spaces inside a token.
	fine := ok
	fine.Auth = Auth{SecretHeader: "authorization", Secret: "Bearer abc", SigningSecret: validSecret}
	if err := ValidateSubscription(&fine); err != nil {
		t.Error(err)
	}
	fine.Auth = Auth{BasicUser: "u", BasicPassword: "p:ss word", SecretHeader: "X-Event-Secret", Secret: "a b"}
	if err := ValidateSubscription(&fine); err != nil {
		t.Error(err)
	}
	fine.Auth = Auth{Token: "abc def=="}
	if err := ValidateSubscription(&fine); err != nil {
		t.Error(err)
	}
}

// A config that JSON can express but that cannot work is refused, naming
// the setting as the config does; zero values take the defaults.
func TestConfigValidate(t *testing.T) {
	sub := Subscription{ID: StaticID("a"), Name: "a", URL: "https://example.com/hook", Events: []string{"*"}}
	for _, tc := range []struct {
		cfg  Config
		want string
	}{
		{Config{Workers: -1}, "workers must be positive"},
		{Config{EndpointConcurrency: -2}, "endpoint_concurrency must be positive"},
		{Config{Timeout: -time.Second}, "timeout must not be negative"},
		{Config{DisableAfter: -time.Hour}, "disable_after must not be negative"},
		{Config{Retention: -time.Hour}, "retention must not be negative"},
		{Config{Retry: []time.Duration{time.Second, 0}}, "retry delay #2 (0s) must be positive"},
		{Config{Retry: []time.Duration{101 * 365 * 24 * time.Hour}}, "retry delay #1 (884760h0m0s) must be at most 100 years"},
		{Config{Subscriptions: []Subscription{sub, sub}}, `subscription "a" is defined twice`},
		{Config{Subscriptions: []Subscription{{ID: StaticID("b|c"), Name: "b|c", URL: sub.URL, Events: sub.Events}}}, `subscription "b|c": id must not contain control characters or '|'`},
		{Config{Subscriptions: []Subscription{{ID: StaticID("d"), Name: "d", URL: sub.URL, Events: sub.Events, Location: "x\n"}}}, `subscription "d": location must not contain`},
	} {
		if err := tc.cfg.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: err = %v, want %q", tc.cfg, err, tc.want)
		}
	}
	if err := (Config{Subscriptions: []Subscription{sub}}).Validate(); err != nil {
		t.Fatalf("defaults: %v", err)
	}
}

// Publishing before the engine has a configuration is an error, not a
// panic and not a message stored without its deliveries.
func TestPublishBeforeConfigure(t *testing.T) {
	db, err := store.Open(t.TempDir(), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	e := NewEngine(NewStore(db.DB), nil, nil)
	if _, err := e.Publish(msg("x", `{}`)); !errors.Is(err, ErrNotConfigured) {
		t.Fatalf("err = %v", err)
	}
	if n := storedQueue(t, e.store); n != 0 {
		t.Fatalf("%d deliveries stored", n)
	}
}
