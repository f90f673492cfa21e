package delivery

import (
	"encoding/json"
	"net/http"
	"time"

	"go.uber.org/zap"
)

// EventEndpointDisabled is published when an endpoint gets disabled.
const EventEndpointDisabled = "endpoint.disabled"

// DisabledEndpoints counts the known subscriptions that are disabled. It
// runs at every metrics scrape: it reads the index in place rather than
// copying every subscription (32 MB for 100,000), and takes healthMu per
// subscription so that attempts settling meanwhile wait for one lookup,
// not for the whole count.
func (e *Engine) DisabledEndpoints() int {
	idx := e.index.Load()
	if idx == nil {
		return 0
	}
	n := 0
	idx.each(func(s *Subscription) {
		if h, err := e.Health(s.ID); err == nil && h.Disabled {
			n++
		}
	})
	return n
}

// Health returns an endpoint's health record.
func (e *Engine) Health(subID string) (Health, error) {
	e.healthMu.Lock()
	defer e.healthMu.Unlock()
	h, err := e.healthOf(subID)
	if err != nil {
		return Health{}, err
	}
	return *h, nil
}

// healthOf returns the cached record, loading it once; healthMu held.
// The record of a subscription that is not (or no longer) indexed is read
// but not cached: its removal has cleared the cache already, and a lane
// that looked at it just before would otherwise put it back for good.
func (e *Engine) healthOf(subID string) (*Health, error) {
	if h, ok := e.health[subID]; ok {
		return h, nil
	}
	h, err := e.store.health(subID)
	if err != nil {
		return nil, err
	}
	if _, known := e.subscription(subID); !known {
		return &h, nil
	}
	e.health[subID] = &h
	e.successStored[subID] = h.LastSuccess
	return &h, nil
}

// storeSuccessEvery is how often an endpoint that keeps succeeding has
// its last success stored: often enough that after a restart the admin API
// still tells when it last worked, seldom enough to cost next to nothing.
const storeSuccessEvery = time.Minute

// recordHealth tracks failures and disables an endpoint that answered 410
// Gone or failed without a success for DisableAfter. Transitions are
// written to the store at once. A success that is no transition is
// stored, at most every storeSuccessEvery, with the attempt's outcome
// (storeSuccess), in the settle transactions shared by many attempts:
// a write of its own for each endpoint would cost a fan-out to thousands
// of them as many transactions.
func (e *Engine) recordHealth(sub *Subscription, res result, started, now time.Time) (storeSuccess bool) {
	e.healthMu.Lock()
	defer e.healthMu.Unlock()
	if cur, ok := e.subscription(sub.ID); !ok || cur.URL != sub.URL {
		// Deleted, or moved to another URL, while the attempt ran: its
		// answer says nothing about the endpoint there is now.
		return false
	}
	h, err := e.healthOf(sub.ID)
	if err != nil {
		e.log().Error("reading endpoint health", zap.String("subscription", sub.ID), zap.Error(err))
		return false
	}
	if !res.success() && started.Before(h.EnabledAt) {
		return false // the operator re-enabled it since: a later answer decides
	}
	changed, disabled := false, false
	if res.success() {
		h.LastSuccess = now
		changed = !h.FailingSince.IsZero()
		h.FailingSince, h.URL = time.Time{}, ""
		if !changed && now.Sub(e.successStored[sub.ID]) >= storeSuccessEvery {
			e.successStored[sub.ID] = now
			storeSuccess = true
		}
	} else {
		if h.FailingSince.IsZero() {
			h.FailingSince, h.URL, changed = now, sub.URL, true
		}
		reason := ""
		switch {
		case res.status == http.StatusGone:
			reason = "receiver answered 410 Gone"
		case now.Sub(h.FailingSince) >= e.settings.Load().DisableAfter:
			reason = "failing without a success since " + h.FailingSince.UTC().Format(time.RFC3339)
		}
		if reason != "" && !h.Disabled {
			h.Disabled, h.DisabledAt, h.Reason = true, now, reason
			changed, disabled = true, true
		}
	}
	if changed {
		if err := e.store.saveHealth(sub.ID, *h); err != nil {
			e.log().Error("saving endpoint health", zap.String("subscription", sub.ID), zap.Error(err))
		} else {
			e.successStored[sub.ID] = h.LastSuccess
		}
	}
	if disabled {
		snapshot := *h
		// Publishing takes other locks; do it after this one is released.
		// The attempt holding this goroutine is counted in wg, so Stop
		// cannot have started waiting yet.
		e.wg.Add(1)
		go func() {
			defer e.wg.Done()
			e.announceDisabled(sub, snapshot)
		}()
	}
	return storeSuccess
}

// announceDisabled logs the disabling and publishes endpoint.disabled to
// the subscription's tenant.
func (e *Engine) announceDisabled(sub *Subscription, h Health) {
	e.log().Warn("webhook endpoint disabled",
		zap.String("subscription", sub.ID), zap.String("url", RedactURL(sub.URL)),
		zap.String("reason", h.Reason), zap.Time("failing_since", h.FailingSince))
	data, _ := json.Marshal(map[string]any{
		"subscription_id": sub.ID,
		"name":            sub.Name,
		"url":             RedactURL(sub.URL),
		"reason":          h.Reason,
		"failing_since":   h.FailingSince.UTC(),
		"disabled_at":     h.DisabledAt.UTC(),
	})
	msg := Message{Event: EventEndpointDisabled, Tenant: sub.Tenant, Data: data}
	if _, err := e.Publish(msg); err != nil {
		e.log().Error("publishing endpoint.disabled", zap.String("subscription", sub.ID), zap.Error(err))
	}
}

// cleanHealth returns the endpoint's health record with its failures
// and any disabling cleared, or nil when there are none; healthMu held.
// Failures of attempts under way do not count either (EnabledAt).
func (e *Engine) cleanHealth(subID string) (*Health, error) {
	h, err := e.healthOf(subID)
	if err != nil || (!h.Disabled && h.FailingSince.IsZero()) {
		return nil, err
	}
	return &Health{LastSuccess: h.LastSuccess, EnabledAt: e.clock.Now()}, nil
}

// reviewStatic clears the failures and any disabling of the static
// subscriptions whose URL is not the one those failures happened at: an
// operator who fixes a failing endpoint's URL in the Caddyfile expects
// the reload (or restart) to deliver there, as a registration moved to
// another URL does. Records without a URL (written by earlier versions)
// cannot tell and are kept. Static subscriptions that stay disabled are
// logged, since a config load is when an operator looks.
func (e *Engine) reviewStatic(static []*Subscription) error {
	ids, err := e.store.healthRecorded()
	if err != nil || len(ids) == 0 {
		return err
	}
	byID := make(map[string]*Subscription, len(static))
	for _, sub := range static {
		byID[sub.ID] = sub
	}
	e.healthMu.Lock()
	defer e.healthMu.Unlock()
	for _, id := range ids {
		if sub := byID[id]; sub != nil {
			if err := e.reviewOne(sub); err != nil {
				return err
			}
		}
	}
	return nil
}

// reviewOne is reviewStatic for one subscription; healthMu held.
func (e *Engine) reviewOne(sub *Subscription) error {
	h, err := e.healthOf(sub.ID)
	if err != nil {
		return err
	}
	if h.URL == "" || h.URL == sub.URL {
		if h.Disabled {
			e.log().Warn("static subscription is disabled: its deliveries are kept until it is re-enabled or given another url",
				zap.String("subscription", sub.ID), zap.String("reason", h.Reason), zap.Time("disabled_at", h.DisabledAt))
		}
		return nil
	}
	clean, err := e.cleanHealth(sub.ID)
	if err != nil || clean == nil {
		return err
	}
	if err := e.store.saveHealth(sub.ID, *clean); err != nil {
		return err
	}
	*h = *clean
	e.log().Info("subscription has a new URL: its failures and disabling are cleared",
		zap.String("subscription", sub.ID), zap.String("url", RedactURL(sub.URL)))
	return nil
}

// Enable re-enables a disabled endpoint; its kept deliveries resume.
// Attempts already under way cannot disable it again by failing.
func (e *Engine) Enable(subID string) error {
	e.healthMu.Lock()
	h, err := e.healthOf(subID)
	if err == nil {
		// Changed in memory only once stored: a failed Enable leaves the
		// endpoint disabled, as it stays after a restart.
		enabled := Health{LastSuccess: h.LastSuccess, EnabledAt: e.clock.Now()}
		if err = e.store.saveHealth(subID, enabled); err == nil {
			*h = enabled
			e.successStored[subID] = enabled.LastSuccess
		}
	}
	e.healthMu.Unlock()
	if err != nil {
		return err
	}
	e.wake(subID)
	return nil
}
