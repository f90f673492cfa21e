package delivery

import (
	"bytes"
	"crypto/rand"
	"encoding/base32"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"
)

// PublishError is a publish request the engine refuses; its message is
// meant for the publisher.
type PublishError struct{ Msg string }

func (e *PublishError) Error() string { return e.Msg }

func publishErr(format string, a ...any) error { return &PublishError{Msg: fmt.Sprintf(format, a...)} }

type publishBody struct {
	Event    *string         `json:"event"`
	Tenant   string          `json:"tenant"`
	Location string          `json:"location"`
	ID       string          `json:"id"`
	Data     json.RawMessage `json:"data"`
}

// ParsePublish reads a publish request body:
// {"event", "tenant", "location", "id", "data"}.
func ParsePublish(body []byte) (Message, error) {
	var msg Message
	trimmed := bytes.TrimSpace(body)
	if len(trimmed) == 0 || trimmed[0] != '{' {
		return msg, publishErr("request body must be a JSON object")
	}
	dec := json.NewDecoder(bytes.NewReader(trimmed))
	dec.DisallowUnknownFields()
	var b publishBody
	if err := dec.Decode(&b); err != nil {
		return msg, publishErr("invalid JSON: %s", jsonProblem(err))
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return msg, publishErr("invalid JSON: unexpected data after the object")
	}
	if b.Event == nil || *b.Event == "" {
		return msg, publishErr("event is required")
	}
	for _, f := range []struct{ what, v string }{{"event", *b.Event}, {"tenant", b.Tenant}, {"location", b.Location}, {"id", b.ID}} {
		if f.v == "" && f.what != "event" {
			continue
		}
		if err := validateName(f.what, f.v); err != nil {
			return msg, &PublishError{Msg: err.Error()}
		}
	}
	data := bytes.TrimSpace(b.Data)
	if len(data) == 0 || bytes.Equal(data, []byte("null")) {
		return msg, publishErr("data is required")
	}
	if data[0] != '{' && data[0] != '[' {
		return msg, publishErr("data must be a JSON object or array")
	}
	var compact bytes.Buffer
	if err := json.Compact(&compact, data); err != nil {
		return msg, publishErr("data is not valid JSON")
	}
	return Message{ID: b.ID, Event: *b.Event, Tenant: b.Tenant, Location: b.Location, Data: compact.Bytes()}, nil
}

func jsonProblem(err error) string {
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &se):
		return fmt.Sprintf("%s (at byte %d)", se.Error(), se.Offset)
	case errors.As(err, &te):
		return fmt.Sprintf("%s must be a %s", te.Field, te.Type.Kind())
	case errors.Is(err, io.ErrUnexpectedEOF):
		return "unexpected end of input"
	}
	return err.Error()
}

var idEncoding = base32.NewEncoding("0123456789abcdefghjkmnpqrstvwxyz").WithPadding(base32.NoPadding)

// NewID returns prefix + a sortable unique identifier: 48 bits of
// milliseconds then 80 random bits, in Crockford's base32.
func NewID(prefix string, now time.Time) string {
	var b [16]byte
	var ms [8]byte
	binary.BigEndian.PutUint64(ms[:], uint64(now.UnixMilli()))
	copy(b[:6], ms[2:])
	_, _ = rand.Read(b[6:])
	return prefix + idEncoding.EncodeToString(b[:])
}

// Publish stores msg with one delivery per matching subscription and
// starts delivering. With a message ID that was already published for the
// tenant, nothing new is stored and the earlier result is returned, or
// ErrIDReused if the message is not the same.
func (e *Engine) Publish(msg Message) (PublishResult, error) {
	settings := e.settings.Load()
	if settings == nil {
		return PublishResult{}, ErrNotConfigured
	}
	now := e.clock.Now().UTC()
	fresh := msg.ID == "" // no earlier publish can have stored deliveries
	if fresh {
		msg.ID = NewID("msg_", now)
	} else {
		rec, found, err := e.store.published(msg.Tenant, msg.ID)
		if err != nil {
			return PublishResult{}, err
		}
		if found {
			if rec.Digest != nil && !bytes.Equal(rec.Digest, messageDigest(&msg)) {
				return PublishResult{}, ErrIDReused
			}
			return PublishResult{ID: msg.ID, Deliveries: rec.Deliveries, Duplicate: true}, nil
		}
	}
	msg.CreatedAt = now
	var subs []*Subscription
	if idx := e.index.Load(); idx != nil {
		for _, s := range idx.tenant(msg.Tenant) {
			if s.Matches(&msg) {
				subs = append(subs, s)
			}
		}
	}
	if err := e.store.canAdd(); err != nil {
		return PublishResult{}, err
	}
	var added int
	err := e.queue.change(func() (int64, error) {
		var err error
		added, err = e.store.enqueue(msg, subs, fresh, now, settings.Retention)
		return int64(added), err
	})
	if added > 0 || err == nil {
		// Also after a failure: what a large fan-out stored before it
		// is delivered, as a retry of the publish would.
		for _, s := range subs {
			e.wakeFrom(s.ID, now)
		}
	}
	if err != nil {
		return PublishResult{}, err
	}
	return PublishResult{ID: msg.ID, Deliveries: len(subs)}, nil
}

// ErrIDReused refuses a publish whose ID the tenant already published
// (within retention) with another event, location or data: answering it
// as a repeat would drop the message without a word.
var ErrIDReused = errors.New("id was already published with a different event, location or data")

// ErrNotConfigured is returned by Publish before the first Configure.
var ErrNotConfigured = errors.New("the delivery engine has no configuration yet")

// PublishResult is the answer to a publish.
type PublishResult struct {
	ID         string `json:"id"`
	Deliveries int    `json:"deliveries"`
	// Duplicate is set when the ID had been published before.
	Duplicate bool `json:"-"`
}
