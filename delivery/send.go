package delivery

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// UserAgent is sent with every delivery unless configured otherwise.
const UserAgent = "caddy-webhook/1"

// maxResponseRead bounds how much of a receiver's answer is read (and
// discarded) so the connection can be reused.
const maxResponseRead = 64 << 10

// result is the outcome of one HTTP attempt.
type result struct {
	status     int
	err        error
	retryAfter time.Duration
	duration   time.Duration
}

func (r result) success() bool { return r.err == nil && r.status >= 200 && r.status < 300 }

// errorText describes a failed attempt for records and logs.
func (r result) errorText() string {
	switch {
	case r.err != nil:
		return describeError(r.err)
	case !r.success():
		return fmt.Sprintf("receiver answered %d %s", r.status, http.StatusText(r.status))
	}
	return ""
}

func describeError(err error) string {
	var ne net.Error
	var fe *ForbiddenTargetError
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err // the URL is the caller's own; say what went wrong with it
	}
	switch {
	case errors.As(err, &fe):
		return fe.Error()
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return "timed out"
	}
	return err.Error()
}

// newClient is the HTTP client for deliveries: no redirects (a 3xx is a
// failure), no proxy from the environment, the SSRF guard on every dial.
// It keeps up to idlePerHost idle connections to a host: as many as the
// workers that may all be delivering to one (many subscriptions can share
// a receiver).
func newClient(allowPrivate bool, idlePerHost int) *http.Client {
	tr := &http.Transport{
		Proxy:                 nil,
		DialContext:           guardedDialer(allowPrivate, 10*time.Second).DialContext,
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          1024,
		MaxIdleConnsPerHost:   idlePerHost,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   10 * time.Second,
		ExpectContinueTimeout: time.Second,
	}
	return &http.Client{
		Transport:     tr,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// payload is the body sent for a message to a subscription.
func payload(sub *Subscription, msg *Message) []byte {
	if sub.Envelope == "data" {
		b := make([]byte, 0, len(msg.Data)+10)
		b = append(b, `{"data":`...)
		b = append(b, msg.Data...)
		return append(b, '}')
	}
	return msg.Data
}

// buildRequest makes the POST for one attempt to target, sub's URL
// already parsed (nil: parse it here).
func buildRequest(ctx context.Context, sub *Subscription, target *url.URL, msg *Message, userAgent string, now time.Time) (*http.Request, error) {
	if target == nil {
		var err error
		if target, err = url.Parse(sub.URL); err != nil {
			return nil, err
		}
	}
	body := payload(sub, msg)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "", bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	u := *target // the request may be changed by the transport
	req.URL, req.Host = &u, strings.TrimSuffix(u.Host, ":")
	// The fixed headers share one backing array: building them was a
	// measurable share of each attempt.
	vals := [...]string{"application/json", "application/json", userAgent, msg.Event, msg.ID}
	h := make(http.Header, 10)
	req.Header = h
	h["Content-Type"], h["Accept"], h["User-Agent"] = vals[0:1:1], vals[1:2:2], vals[2:3:3]
	h["X-Event-Name"] = vals[3:4:4]
	// Standard Webhooks' webhook-id and our Webhook-Id are one header
	// (names are case-insensitive): the message ID, the same on every retry.
	h["Webhook-Id"] = vals[4:5:5]
	// Credentials in the URL are sent as Basic authentication, as Go's
	// client and curl do, unless the subscription sets Authorization.
	if u.User != nil {
		pw, _ := u.User.Password()
		req.SetBasicAuth(u.User.Username(), pw)
		req.URL.User = nil
	}
	if err := sub.Auth.apply(h, msg.ID, now, body); err != nil {
		return nil, err
	}
	return req, nil
}

func (a *Auth) apply(h http.Header, msgID string, now time.Time, body []byte) error {
	if a.SecretHeader != "" {
		h.Set(a.SecretHeader, a.Secret)
	}
	switch {
	case a.Token != "":
		h.Set("Authorization", `Token token="`+a.Token+`"`)
	case a.BasicUser != "" || a.BasicPassword != "":
		h.Set("Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte(a.BasicUser+":"+a.BasicPassword)))
	case a.Authorization != "":
		h.Set("Authorization", a.Authorization)
	}
	if a.SigningSecret == "" {
		return nil
	}
	ts := strconv.FormatInt(now.Unix(), 10)
	var sigs []byte
	for i, secret := range a.signingSecrets() {
		key, err := DecodeSigningSecret(secret)
		if err != nil {
			return err
		}
		if i > 0 {
			sigs = append(sigs, ' ') // Standard Webhooks: space-delimited
		}
		sigs = append(append(sigs, "v1,"...), Sign(key, msgID, ts, body)...)
	}
	h.Set("Webhook-Timestamp", ts)
	h.Set("Webhook-Signature", string(sigs))
	return nil
}

// DecodeSigningSecret turns "whsec_<base64>" into the HMAC key.
func DecodeSigningSecret(s string) ([]byte, error) {
	raw, ok := strings.CutPrefix(s, "whsec_")
	if !ok {
		return nil, errors.New(`signing secret must start with "whsec_"`)
	}
	key, err := base64.StdEncoding.DecodeString(raw)
	if err != nil || len(key) < 16 {
		return nil, errors.New("signing secret must be whsec_ followed by at least 16 bytes in base64")
	}
	return key, nil
}

// Sign computes a Standard Webhooks v1 signature: base64 of
// HMAC-SHA256(key, "<id>.<timestamp>.<body>").
func Sign(key []byte, msgID, timestamp string, body []byte) string {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(msgID))
	m.Write([]byte{'.'})
	m.Write([]byte(timestamp))
	m.Write([]byte{'.'})
	m.Write(body)
	return base64.StdEncoding.EncodeToString(m.Sum(nil))
}

// send makes one attempt with its own timeout; target is sub's URL
// parsed, or nil.
func send(ctx context.Context, client *http.Client, sub *Subscription, target *url.URL, msg *Message, userAgent string, timeout time.Duration, now time.Time) result {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	start := time.Now()
	req, err := buildRequest(ctx, sub, target, msg, userAgent, now)
	if err != nil {
		return result{err: err}
	}
	// The transport directly: the client would copy the headers for
	// redirects, which are never followed.
	res, err := client.Transport.RoundTrip(req)
	if err != nil {
		return result{err: err, duration: time.Since(start)}
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(res.Body, maxResponseRead))
	res.Body.Close()
	r := result{status: res.StatusCode, duration: time.Since(start)}
	if res.StatusCode == http.StatusTooManyRequests || res.StatusCode == http.StatusServiceUnavailable {
		r.retryAfter = parseRetryAfter(res.Header.Get("Retry-After"), now)
	}
	return r
}

// maxRetryAfter caps how long a receiver can push a retry out.
const maxRetryAfter = 24 * time.Hour

func parseRetryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	var d time.Duration
	if secs, err := strconv.ParseInt(v, 10, 64); err == nil {
		// Capped before the multiplication, which would overflow for
		// more than 292 years and could land anywhere.
		d = time.Duration(min(secs, int64(maxRetryAfter/time.Second))) * time.Second
	} else if t, err := http.ParseTime(v); err == nil {
		d = t.Sub(now)
	}
	return min(max(d, 0), maxRetryAfter)
}
