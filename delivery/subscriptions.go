package delivery

import (
	"context"
	"errors"
	"time"

	"github.com/dgraph-io/badger/v4"

	"github.com/hookgate/caddy-webhook/internal/store"
)

// subscription finds a static or registered subscription.
func (e *Engine) subscription(id string) (*Subscription, bool) {
	idx := e.index.Load()
	if idx == nil {
		return nil, false
	}
	return idx.get(id)
}

// CreateSubscription and UpdateSubscription refuse with these when the
// subscription was stored or deleted since the caller looked (a
// registration API call racing another of the same tenant).
var (
	ErrSubscriptionExists = errors.New("the subscription exists")
	ErrNoSubscription     = errors.New("no such subscription")
)

// ErrTooManySubscriptions refuses a registration beyond its tenant's
// limit.
var ErrTooManySubscriptions = errors.New("too many subscriptions registered")

// PutSubscription stores a registered subscription, new or changed.
func (e *Engine) PutSubscription(sub Subscription) error {
	return e.putSubscription(sub, putAny, 0, false)
}

// CreateSubscription stores a new registered subscription;
// ErrSubscriptionExists if one has its ID, ErrTooManySubscriptions if
// limit > 0 and its tenant has that many of its source already.
func (e *Engine) CreateSubscription(sub Subscription, limit int) error {
	return e.putSubscription(sub, putNew, limit, false)
}

// UpdateSubscription stores a changed registered subscription;
// ErrNoSubscription if none has its ID (any more). verified says that its
// URL has just answered a verification request with a 2xx: the endpoint
// has been shown to work, so its failures and any disabling are cleared,
// as when the URL changes.
func (e *Engine) UpdateSubscription(sub Subscription, verified bool) error {
	return e.putSubscription(sub, putExisting, 0, verified)
}

// Registered counts the subscriptions a tenant registered through source.
func (e *Engine) Registered(source, tenant string) int {
	idx := e.index.Load()
	if idx == nil {
		return 0
	}
	n := 0
	for _, s := range idx.tenant(tenant) {
		if s.Source == source {
			n++
		}
	}
	return n
}

type putMode int

const (
	putAny putMode = iota
	putNew
	putExisting
)

// putSubscription checks the mode's condition and stores sub with the
// credentials its tenant granted, all under subsMu, so that neither a
// concurrent registration nor SetCredentials can slip in between.
func (e *Engine) putSubscription(sub Subscription, mode putMode, limit int, verified bool) error {
	if err := ValidateSubscription(&sub); err != nil {
		return err
	}
	if err := e.store.canAdd(); err != nil {
		return err
	}
	e.subsMu.Lock()
	err := e.storeSubscription(&sub, mode, limit, verified)
	e.subsMu.Unlock()
	if err != nil {
		return err
	}
	// Deliveries kept while it was deleted (or queued before a change)
	// resume now, not at the next event for it.
	e.wake(sub.ID)
	return nil
}

// storeSubscription is putSubscription's part under subsMu.
func (e *Engine) storeSubscription(sub *Subscription, mode putMode, limit int, verified bool) error {
	old, exists := e.subscription(sub.ID)
	switch {
	case mode == putNew && exists:
		return ErrSubscriptionExists
	case mode == putExisting && !exists:
		return ErrNoSubscription
	case mode == putNew && limit > 0 && e.Registered(sub.Source, sub.Tenant) >= limit:
		return ErrTooManySubscriptions
	}
	cred, granted, err := e.store.credentials(sub.Source, sub.Tenant)
	if err != nil {
		return err
	}
	if granted {
		sub.Auth.BasicUser, sub.Auth.BasicPassword = cred.ID, cred.Secret
	}
	// A registration, one moved to another URL or one just verified
	// starts with a clean health record: the failures of the URL before
	// are not its own, or the endpoint has been fixed since, and a tenant
	// who fixed it that way would otherwise stay disabled with nothing in
	// the answer to tell it so. Attempts wait for healthMu to record
	// their outcome, so it is held only then.
	var clean *Health
	if !exists || old.URL != sub.URL || verified {
		e.healthMu.Lock()
		defer e.healthMu.Unlock()
		if clean, err = e.cleanHealth(sub.ID); err != nil {
			return err
		}
	}
	if err := e.store.putSubscription(sub, clean); err != nil {
		return err
	}
	if clean != nil {
		e.health[sub.ID] = clean // before it is indexed, so cached here
		e.successStored[sub.ID] = clean.LastSuccess
	}
	e.registered[sub.ID] = sub
	e.indexRegistered(sub)
	return nil
}

// DeleteSubscription removes a registered subscription and its health
// record. Its pending deliveries stay in the queue but are no longer
// attempted.
func (e *Engine) DeleteSubscription(id string) error {
	if err := e.deleteRegistered(id); err != nil {
		return err
	}
	e.forgetRemoved(id)
	return nil
}

func (e *Engine) deleteRegistered(id string) error {
	e.subsMu.Lock()
	defer e.subsMu.Unlock()
	// Under healthMu, so that an attempt settling now either records its
	// outcome before the record goes or finds the subscription gone.
	e.healthMu.Lock()
	defer e.healthMu.Unlock()
	if err := e.store.deleteSubscription(id); err != nil {
		return err
	}
	e.unindexRegistered(e.registered[id])
	delete(e.registered, id)
	delete(e.health, id)
	delete(e.successStored, id)
	return nil
}

// Subscriptions lists static and registered subscriptions.
func (e *Engine) Subscriptions() []Subscription {
	idx := e.index.Load()
	if idx == nil {
		return nil
	}
	out := make([]Subscription, 0, idx.len())
	idx.each(func(s *Subscription) { out = append(out, *s) })
	return out
}

// TenantSubscriptions lists the subscriptions a tenant registered through
// source. The registration API asks at every call, so it reads the
// tenant's part of the index rather than copying every subscription.
func (e *Engine) TenantSubscriptions(source, tenant string) []Subscription {
	idx := e.index.Load()
	if idx == nil {
		return nil
	}
	var out []Subscription
	for _, s := range idx.tenant(tenant) {
		if s.Source == source {
			out = append(out, *s)
		}
	}
	return out
}

// Subscription returns a static or registered subscription by ID.
func (e *Engine) Subscription(id string) (Subscription, bool) {
	s, ok := e.subscription(id)
	if !ok {
		return Subscription{}, false
	}
	return *s, true
}

// Probe sends one request for event with data to sub's URL, with its
// authentication and under the same rules as a delivery (timeout, no
// redirects, SSRF guard), without queueing or recording anything. It is
// how registrations are verified and test events sent.
func (e *Engine) Probe(sub *Subscription, event string, data []byte) ProbeResult {
	s := e.settings.Load()
	now := e.clock.Now()
	msg := Message{ID: NewID("msg_", now), Event: event, Tenant: sub.Tenant, Data: data, CreatedAt: now}
	ctx := context.Background()
	res := send(ctx, s.client, sub, nil, &msg, s.UserAgent, s.Timeout, now)
	return ProbeResult{Status: res.status, Latency: res.duration, Success: res.success(), Error: res.errorText()}
}

// ProbeResult is the outcome of a Probe.
type ProbeResult struct {
	Status  int
	Latency time.Duration
	Success bool
	Error   string
}

// MsgLowSpace is what a publisher or an API caller is told when a write
// is refused because the store is low on disk space (with status 507 and
// Retry-After).
const MsgLowSpace = "insufficient storage: try again later"

// LowSpaceRetryAfter is the Retry-After (seconds) of every answer that
// refuses a write because the store is low on disk space.
const LowSpaceRetryAfter = "60"

// Writable is nil while data may be added to the store, or the reason it
// may not (see Store.SetWritable): the registration API asks before it
// sends a verification request for a webhook it could not store.
func (e *Engine) Writable() error { return e.store.canAdd() }

// Credentials returns what a tenant granted to subscriptions of source.
func (e *Engine) Credentials(source, tenant string) (Credentials, bool, error) {
	return e.store.credentials(source, tenant)
}

// SetCredentials stores a tenant's credentials and applies them as Basic
// authentication to every subscription of that tenant and source, in the
// same transaction.
func (e *Engine) SetCredentials(source, tenant string, c Credentials) error {
	if err := e.store.canAdd(); err != nil {
		return err
	}
	e.subsMu.Lock()
	defer e.subsMu.Unlock()
	var changed []*Subscription
	for _, sub := range e.registered {
		if sub.Source == source && sub.Tenant == tenant {
			cp := *sub
			cp.Auth.BasicUser, cp.Auth.BasicPassword = c.ID, c.Secret
			changed = append(changed, &cp)
		}
	}
	err := store.Update(e.store.db, func(txn *badger.Txn) error {
		if err := setJSON(txn, credKey(source, tenant), c, 0); err != nil {
			return err
		}
		for _, sub := range changed {
			if err := setJSON(txn, []byte(prefixSub+sub.ID), sub, 0); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, sub := range changed {
		e.registered[sub.ID] = sub
		e.indexRegistered(sub)
	}
	return nil
}

// RecentAttempts returns a subscription's latest attempts, newest first.
func (e *Engine) RecentAttempts(subID string, limit int) ([]Attempt, error) {
	return e.store.RecentAttempts(subID, limit)
}
