package delivery

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"golang.org/x/net/http/httpguts"
)

// Defaults of the engine's settings.
var (
	DefaultRetry = []time.Duration{
		5 * time.Second, 5 * time.Minute, 30 * time.Minute,
		2 * time.Hour, 5 * time.Hour, 10 * time.Hour, 10 * time.Hour,
	}
)

const (
	DefaultWorkers             = 64
	DefaultEndpointConcurrency = 8
	DefaultTimeout             = 10 * time.Second
	DefaultDisableAfter        = 72 * time.Hour
	DefaultRetention           = 7 * 24 * time.Hour
)

const maxRetryDelay = 100 * 365 * 24 * time.Hour

// Config is the engine's behaviour; it may change on every config reload.
type Config struct {
	// Workers bounds concurrent deliveries across all endpoints.
	Workers int
	// EndpointConcurrency bounds concurrent deliveries to one subscription.
	EndpointConcurrency int
	// Timeout is the limit of one attempt.
	Timeout time.Duration
	// Retry holds the delays between attempts; len(Retry)+1 attempts in all.
	Retry []time.Duration
	// DisableAfter: an endpoint failing without a success for this long is
	// disabled; 410 Gone disables at once. 0 means DefaultDisableAfter.
	DisableAfter time.Duration
	// Retention is how long settled deliveries and attempt records are kept.
	Retention time.Duration
	// AllowPrivateTargets lets deliveries reach loopback, private and
	// link-local addresses.
	AllowPrivateTargets bool
	UserAgent           string
	// Subscriptions are the static subscriptions of the config.
	Subscriptions []Subscription
}

// Validate reports what Configure would refuse.
func (c Config) Validate() error {
	_, err := c.withDefaults()
	return err
}

func (c Config) withDefaults() (Config, error) {
	if c.Workers == 0 {
		c.Workers = DefaultWorkers
	}
	if c.EndpointConcurrency == 0 {
		c.EndpointConcurrency = min(DefaultEndpointConcurrency, c.Workers)
	}
	if c.Timeout == 0 {
		c.Timeout = DefaultTimeout
	}
	if c.Retry == nil {
		c.Retry = DefaultRetry
	}
	if c.DisableAfter == 0 {
		c.DisableAfter = DefaultDisableAfter
	}
	if c.Retention == 0 {
		c.Retention = DefaultRetention
	}
	if c.UserAgent == "" {
		c.UserAgent = UserAgent
	}
	// Named as in the config, which is where an operator has to fix it.
	switch {
	case c.Workers < 0:
		return c, errors.New("workers must be positive")
	case c.EndpointConcurrency < 0:
		return c, errors.New("endpoint_concurrency must be positive")
	case c.Timeout < 0:
		return c, errors.New("timeout must not be negative")
	case c.DisableAfter < 0:
		return c, errors.New("disable_after must not be negative")
	case c.Retention < 0:
		return c, errors.New("retention must not be negative")
	}
	for i, d := range c.Retry {
		if d <= 0 {
			return c, fmt.Errorf("retry delay #%d (%v) must be positive", i+1, d)
		}
		// Queue keys hold due times as Unix nanoseconds, which end in 2262.
		if d > maxRetryDelay {
			return c, fmt.Errorf("retry delay #%d (%v) must be at most 100 years", i+1, d)
		}
	}
	seen := map[string]bool{}
	for i := range c.Subscriptions {
		s := &c.Subscriptions[i]
		if err := ValidateSubscription(s); err != nil {
			return c, fmt.Errorf("subscription %q: %w", s.Name, err)
		}
		if seen[s.ID] {
			return c, fmt.Errorf("subscription %q is defined twice", s.Name)
		}
		seen[s.ID] = true
	}
	return c, nil
}

// StaticID is the ID of the static subscription with this name.
func StaticID(name string) string { return "static:" + name }

// ValidateSubscription checks a subscription before it is used or stored.
// Errors never quote a secret.
func ValidateSubscription(s *Subscription) error {
	if err := ValidateURL(s.URL); err != nil {
		return err
	}
	if len(s.Events) == 0 {
		return errors.New("at least one event is required (\"*\" for all)")
	}
	for _, ev := range s.Events {
		if err := validateName("event", ev); err != nil {
			return err
		}
	}
	if err := validateName("id", s.ID); err != nil {
		return err
	}
	if s.Tenant != "" {
		if err := validateName("tenant", s.Tenant); err != nil {
			return err
		}
	}
	if s.Location != "" {
		if err := validateName("location", s.Location); err != nil {
			return err
		}
	}
	if s.Envelope != "" && s.Envelope != "data" {
		return fmt.Errorf("unknown envelope %q (only \"data\")", s.Envelope)
	}
	return s.Auth.validate()
}

// validate checks that every credential can be sent as it is meant to be:
// a value Go's client refuses to send would fail every delivery, and a
// header it drops or that the delivery sets itself would lose the secret
// without a word. Errors never quote a secret.
func (a *Auth) validate() error {
	if (a.SecretHeader == "") != (a.Secret == "") {
		return errors.New("secret_header needs both a header name and a secret")
	}
	if a.Token != "" && (a.BasicUser != "" || a.BasicPassword != "") {
		return errors.New("token and basic both set the Authorization header: use one")
	}
	if err := a.validateSecretHeader(); err != nil {
		return err
	}
	switch {
	case strings.ContainsAny(a.Token, `"\`) || !httpguts.ValidHeaderFieldValue(a.Token):
		return errors.New(`token must not contain control characters, '"' or '\' (it is sent quoted: Token token="…")`)
	case !httpguts.ValidHeaderFieldValue(a.Authorization):
		return errors.New("the authorization value must not contain control characters")
	case strings.ContainsRune(a.BasicUser, ':'):
		// RFC 7617: the receiver splits at the first colon.
		return errors.New("the basic user id must not contain ':'")
	case HasControl(a.BasicUser) || HasControl(a.BasicPassword):
		return errors.New("the basic user id and password must not contain control characters")
	}
	if a.SigningSecret == "" && len(a.PreviousSigningSecrets) > 0 {
		return errors.New("previous signing secrets need a current signing secret")
	}
	for i, secret := range a.signingSecrets() {
		if _, err := DecodeSigningSecret(secret); err != nil {
			if i > 0 {
				return fmt.Errorf("previous signing secret #%d: %s", i, strings.TrimPrefix(err.Error(), "signing secret "))
			}
			return err
		}
	}
	return nil
}

// ownHeaders are set by every delivery (or by Go's client, which drops
// them from the headers given): a secret in one of them would be
// overwritten or never sent.
var ownHeaders = []string{
	"Content-Type", "Content-Length", "Transfer-Encoding", "Host",
	"Connection", "Keep-Alive", "Proxy-Connection", "Te", "Trailer", "Upgrade",
	"X-Event-Name", "Webhook-Id", "Webhook-Timestamp", "Webhook-Signature",
}

func (a *Auth) validateSecretHeader() error {
	if a.SecretHeader == "" {
		return nil
	}
	name := http.CanonicalHeaderKey(a.SecretHeader)
	switch {
	case !httpguts.ValidHeaderFieldName(a.SecretHeader):
		return fmt.Errorf("secret_header %q is not a valid header name", a.SecretHeader)
	case slices.Contains(ownHeaders, name):
		return fmt.Errorf("secret_header %s is set by the delivery itself: choose another header", name)
	case name == "Authorization" && (a.Token != "" || a.BasicUser != "" || a.BasicPassword != "" || a.Authorization != ""):
		return errors.New("secret_header Authorization and the subscription's other authentication both set the Authorization header: use one")
	case !httpguts.ValidHeaderFieldValue(a.Secret):
		return fmt.Errorf("the secret of secret_header %s must not contain control characters", name)
	}
	return nil
}

// HasControl reports ASCII control characters, which no identifier may
// hold and RFC 7617 forbids in Basic credentials.
func HasControl(s string) bool {
	return strings.ContainsFunc(s, func(r rune) bool { return r < 0x20 || r == 0x7f })
}

// ValidateURL accepts absolute http(s) URLs with a host.
func ValidateURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.Hostname() == "" {
		return errors.New("url must be an absolute http or https URL with a host")
	}
	return nil
}

// maxName bounds identifiers (events, tenants, locations, ids): they are
// part of storage keys.
const maxName = 200

func validateName(what, v string) error {
	if v == "" {
		return fmt.Errorf("%s must not be empty", what)
	}
	if len(v) > maxName {
		return fmt.Errorf("%s is longer than %d bytes", what, maxName)
	}
	if HasControl(v) || strings.ContainsRune(v, '|') {
		return fmt.Errorf("%s must not contain control characters or '|'", what)
	}
	return nil
}
