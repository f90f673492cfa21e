// Package caddywebhook adapts the ingest and delivery engines to Caddy: it
// registers the `webhooks` app and the HTTP handlers, parses the Caddyfile
// and translates requests into calls to the domain packages.
package caddywebhook

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/hookgate/caddy-webhook/delivery"
	"github.com/hookgate/caddy-webhook/internal/store"
)

func init() {
	caddy.RegisterModule(App{})
}

// App is the `webhooks` app. It owns the embedded badger database that
// holds push windows and the delivery queue, one per Caddy instance, and
// the workers that deliver published events to subscribers. The open
// database and the delivery engine are shared across config reloads: Caddy
// provisions the new config while the old one still runs, and badger
// allows only one opener per directory.
type App struct {
	// Where the database lives. Default: `webhook` under Caddy's data
	// directory. Placeholders such as {env.*} are replaced.
	StorageDir string `json:"storage_dir,omitempty"`

	// Encrypt the database at rest (AES) with this key: base64 of 16, 24
	// or 32 bytes, normally a placeholder such as {env.WEBHOOK_KEY}. The
	// key cannot change while Caddy runs, and data written with a key can
	// only be read with it, or moved to a new key with
	// previous_encryption_keys.
	EncryptionKey string `json:"encryption_key,omitempty"`

	// Keys the database may have been encrypted with before
	// encryption_key, in the same form. A database found under one of
	// them is moved to encryption_key when Caddy opens it, at a start (a
	// reload cannot change the key of the open database): badger's data
	// keys are sealed anew, nothing else is rewritten. Once that is
	// logged, the previous keys can be removed.
	PreviousEncryptionKeys []string `json:"previous_encryption_keys,omitempty"`

	// Free space, in bytes, that the filesystem of storage_dir must keep.
	// Below it new messages, registrations and pushes are refused (507,
	// or 503 for pushes) and deliveries pause, until space is freed:
	// badger writes through memory-mapped files, and a write the
	// filesystem cannot back kills the whole Caddy process. The minimum
	// leaves room for badger's own flushes and compactions. Default:
	// 256 MiB; a negative value turns the guard off.
	MinFreeSpace int64 `json:"min_free_space,omitempty"`

	// Make every write reach the disk before it is acknowledged: each
	// badger commit waits for an msync of its write-ahead log. Without
	// it a write is acknowledged once it is in the kernel's page cache,
	// which survives a crash of Caddy (kill -9 included) but not a power
	// cut or a kernel crash. It costs throughput (see the README) and can
	// only change with a restart.
	SyncWrites bool `json:"sync_writes,omitempty"`

	// Concurrent deliveries across all subscriptions. Default: 64.
	Workers int `json:"workers,omitempty"`

	// Concurrent deliveries to one subscription. Default: 8.
	EndpointConcurrency int `json:"endpoint_concurrency,omitempty"`

	// Time limit of one delivery attempt. Default: 10s.
	Timeout caddy.Duration `json:"timeout,omitempty"`

	// Delays between attempts. Default: 5s 5m 30m 2h 5h 10h 10h (eight
	// attempts over about 28 hours). Each is spread by ±10%.
	Retry []caddy.Duration `json:"retry,omitempty"`

	// A subscription failing without a success for this long is disabled
	// until re-enabled (through the admin API, or by giving it another
	// `url`); its deliveries are kept. Default: 72h.
	DisableAfter caddy.Duration `json:"disable_after,omitempty"`

	// How long delivered and failed messages and attempt records are kept.
	// Default: 7 days.
	Retention caddy.Duration `json:"retention,omitempty"`

	// Allow deliveries to loopback, private, link-local and other reserved
	// addresses. Off by default, so a subscriber URL cannot reach internal
	// services or cloud metadata.
	AllowPrivateTargets bool `json:"allow_private_targets,omitempty"`

	// Static subscriptions, configured with the server rather than through
	// the registration API.
	Subscriptions []SubscriptionConfig `json:"subscriptions,omitempty"`

	dir      string
	shared   *sharedStore
	delivery delivery.Config
	logger   *zap.Logger

	windows *windowClaims
}

// SubscriptionConfig is a static subscription. Secrets may be placeholders
// such as {env.KINGUIN_SECRET}.
type SubscriptionConfig struct {
	// Name of the subscription, unique in the config.
	Name string `json:"name"`
	// Where to POST events: an absolute http(s) URL.
	URL string `json:"url"`
	// Events to deliver; "*" for all.
	Events []string `json:"events"`
	// Tenant whose events to deliver. Default "" (single-tenant).
	Tenant string `json:"tenant,omitempty"`
	// Deliver only events of this location. Default: all locations.
	Location string `json:"location,omitempty"`
	// Send Secret in this header (Kinguin: X-Event-Secret). Not one the
	// delivery sets itself (Content-Type, Host, X-Event-Name, Webhook-*,
	// …), and Authorization only without token or basic auth.
	SecretHeader string `json:"secret_header,omitempty"`
	Secret       string `json:"secret,omitempty"`
	// Send `Authorization: Token token="<token>"` (FlyBuy). Not together
	// with basic_user/basic_password: both set Authorization.
	Token string `json:"token,omitempty"`
	// Send HTTP Basic authentication.
	BasicUser     string `json:"basic_user,omitempty"`
	BasicPassword string `json:"basic_password,omitempty"`
	// Sign with Standard Webhooks headers; a `whsec_` secret.
	SigningSecret string `json:"signing_secret,omitempty"`
	// Secrets that sign every delivery as well while signing_secret is
	// rotated: webhook-signature lists one signature per secret, and
	// receivers accept a message when any of them verifies. Remove them
	// once every receiver has the new secret.
	PreviousSigningSecrets []string `json:"previous_signing_secrets,omitempty"`
	// "data" wraps the payload as {"data": …} (FlyBuy).
	Envelope string `json:"envelope,omitempty"`
}

// CaddyModule returns the Caddy module information.
func (App) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "webhooks",
		New: func() caddy.Module { return new(App) },
	}
}

// Provision checks the settings and joins (or sets up) the store of its
// directory. The database itself is opened by Start.
func (a *App) Provision(ctx caddy.Context) error {
	a.logger = ctx.Logger()
	if err := registerMetrics(ctx.GetMetricsRegistry()); err != nil {
		return fmt.Errorf("webhooks: metrics: %w", err)
	}
	var err error
	if a.delivery, err = a.deliveryConfig(); err != nil {
		return fmt.Errorf("webhooks: %w", err)
	}
	dir, err := a.storageDir()
	if err != nil {
		return err
	}
	key, previous, err := a.encryptionKeys()
	if err != nil {
		return err
	}
	keyID := sha256.Sum256(key)
	val, _, err := stores.LoadOrNew(dir, func() (caddy.Destructor, error) {
		s := newSharedStore(dir, key, keyID, a.SyncWrites)
		s.previousKeys = previous
		return s, nil
	})
	if err != nil {
		return fmt.Errorf("webhooks: %w", err)
	}
	// Both are fixed when badger opens; a reload that changes one
	// would otherwise run with the old value while claiming the new.
	shared := val.(*sharedStore)
	switch {
	case shared.keyID != keyID:
		_, _ = stores.Delete(dir)
		return fmt.Errorf("webhooks: encryption_key differs from the one the open database uses; it can only change with a restart (with the key in use among previous_encryption_keys)")
	case shared.syncWrites != a.SyncWrites:
		_, _ = stores.Delete(dir)
		return fmt.Errorf("webhooks: sync_writes differs from what the open database uses (%v); it can only change with a restart", shared.syncWrites)
	}
	// The database opens at Start, which `caddy validate` never reaches:
	// what would stop it opening is checked here.
	if err := store.CheckDir(dir, key, previous); err != nil {
		_, _ = stores.Delete(dir)
		return fmt.Errorf("webhooks: storage_dir: %w", err)
	}
	a.dir, a.shared = dir, val.(*sharedStore)
	a.windows = newWindowClaims()
	return nil
}

// minFreeSpace resolves MinFreeSpace: the default when unset, 0 (no
// guard) when negative.
func (a *App) minFreeSpace() int64 {
	switch {
	case a.MinFreeSpace == 0:
		return store.DefaultMinFreeSpace
	case a.MinFreeSpace < 0:
		return 0
	}
	return a.MinFreeSpace
}

// encryptionKeys resolves and decodes encryption_key and
// previous_encryption_keys. Errors name the key by its place, never its
// value.
func (a *App) encryptionKeys() (key []byte, previous [][]byte, err error) {
	if a.EncryptionKey == "" {
		if len(a.PreviousEncryptionKeys) > 0 {
			return nil, nil, errors.New("webhooks: previous_encryption_keys need an encryption_key to move the data to")
		}
		return nil, nil, nil
	}
	if key, err = decodeEncryptionKey(a.EncryptionKey); err != nil {
		return nil, nil, fmt.Errorf("webhooks: encryption_key: %v", err)
	}
	for i, raw := range a.PreviousEncryptionKeys {
		k, err := decodeEncryptionKey(raw)
		if err != nil {
			return nil, nil, fmt.Errorf("webhooks: previous encryption key #%d: %v", i+1, err)
		}
		if bytes.Equal(k, key) {
			return nil, nil, fmt.Errorf("webhooks: previous encryption key #%d is the encryption_key itself", i+1)
		}
		previous = append(previous, k)
	}
	return key, previous, nil
}

// decodeEncryptionKey replaces the placeholders in raw and decodes the
// key.
func decodeEncryptionKey(raw string) ([]byte, error) {
	v, err := caddy.NewReplacer().ReplaceOrErr(raw, true, true)
	if err != nil {
		return nil, err
	}
	return store.ParseEncryptionKey(v)
}

func (a *App) storageDir() (string, error) {
	dir, err := caddy.NewReplacer().ReplaceOrErr(a.StorageDir, true, true)
	if err != nil {
		return "", fmt.Errorf("webhooks: storage_dir: %w", err)
	}
	if dir == "" {
		dir = filepath.Join(caddy.AppDataDir(), "webhook")
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", fmt.Errorf("webhooks: storage_dir: %w", err)
	}
	return abs, nil
}

// deliveryConfig resolves placeholders and checks the delivery settings.
func (a *App) deliveryConfig() (delivery.Config, error) {
	cfg := delivery.Config{
		Workers:             a.Workers,
		EndpointConcurrency: a.EndpointConcurrency,
		Timeout:             time.Duration(a.Timeout),
		DisableAfter:        time.Duration(a.DisableAfter),
		Retention:           time.Duration(a.Retention),
		AllowPrivateTargets: a.AllowPrivateTargets,
	}
	for _, d := range a.Retry {
		cfg.Retry = append(cfg.Retry, time.Duration(d))
	}
	repl := caddy.NewReplacer()
	for _, sc := range a.Subscriptions {
		sub, err := sc.subscription(repl)
		if err != nil {
			return cfg, fmt.Errorf("subscription %q: %w", sc.Name, err)
		}
		cfg.Subscriptions = append(cfg.Subscriptions, sub)
	}
	return cfg, cfg.Validate()
}

func (sc SubscriptionConfig) subscription(repl *caddy.Replacer) (delivery.Subscription, error) {
	sub := delivery.Subscription{
		ID: delivery.StaticID(sc.Name), Name: sc.Name, Events: sc.Events,
		Tenant: sc.Tenant, Location: sc.Location, Envelope: sc.Envelope,
	}
	if sc.Name == "" {
		return sub, fmt.Errorf("a subscription has no name")
	}
	fields := []struct {
		name     string
		from     string
		to       *string
		required bool
	}{
		{"url", sc.URL, &sub.URL, true},
		{"secret", sc.Secret, &sub.Auth.Secret, false},
		{"token", sc.Token, &sub.Auth.Token, false},
		{"basic user", sc.BasicUser, &sub.Auth.BasicUser, false},
		{"basic password", sc.BasicPassword, &sub.Auth.BasicPassword, false},
		{"signing_secret", sc.SigningSecret, &sub.Auth.SigningSecret, false},
	}
	for _, f := range fields {
		if f.from == "" {
			if f.required {
				return sub, fmt.Errorf("%s is required", f.name)
			}
			continue
		}
		v, err := repl.ReplaceOrErr(f.from, true, true)
		if err != nil {
			return sub, fmt.Errorf("%s: %v", f.name, err)
		}
		*f.to = v
	}
	for i, secret := range sc.PreviousSigningSecrets {
		v, err := repl.ReplaceOrErr(secret, true, true)
		if err != nil {
			return sub, fmt.Errorf("previous signing secret #%d: %v", i+1, err)
		}
		sub.Auth.PreviousSigningSecrets = append(sub.Auth.PreviousSigningSecrets, v)
	}
	sub.Auth.SecretHeader = sc.SecretHeader
	return sub, nil
}

// Start opens the database if this is the first config to use it, applies
// this config's delivery settings and starts delivering (a reload only
// swaps the settings of the running engine).
func (a *App) Start() error {
	s := a.shared
	s.mu.Lock()
	defer s.mu.Unlock()
	reused := s.open.Load() != nil
	o, err := s.openFor(a)
	if err != nil {
		return fmt.Errorf("webhooks: %w", err)
	}
	if reused { // openFor configured a fresh engine with these settings
		if err := a.configure(o); err != nil {
			return err
		}
	}
	if err := o.engine.Start(); err != nil {
		return fmt.Errorf("webhooks: %w", err)
	}
	s.running = append(s.running, a)
	if prev := current.Swap(o); prev != nil && prev != o {
		a.warnMovedStore(prev, o)
	}
	// How durable and how private the store is, for the operator to see.
	a.logger.Info("webhook store ready", zap.String("dir", s.dir), zap.Bool("reused", reused),
		zap.Bool("sync_writes", s.syncWrites), zap.Bool("encrypted", len(s.key) > 0))
	return nil
}

// warnMovedStore tells the operator that a reload moved the store to
// another storage_dir: what the store before holds stays behind, which
// nothing else would say.
func (a *App) warnMovedStore(prev, next *openStore) {
	a.logger.Warn("storage_dir changed: deliveries queued in the previous directory are not sent, and push windows start empty, until it is used again",
		zap.String("previous_dir", prev.db.Dir()), zap.String("dir", next.db.Dir()),
		zap.Int64("queued_there", prev.engine.QueueDepth()))
}

// configure makes this config's settings and logger the engine's, its
// minimum free space the store's, and its handlers' push windows the ones
// the admin API shows.
func (a *App) configure(o *openStore) error {
	o.db.SetMinFreeSpace(a.minFreeSpace())
	o.claims.Store(a.windows)
	eng := o.engine
	eng.SetLogger(a.logger)
	eng.SetObserver(observeAttempt)
	if err := eng.Configure(a.delivery); err != nil {
		return fmt.Errorf("webhooks: %w", err)
	}
	return nil
}

// Stop implements caddy.App. The engine keeps running for the config that
// replaces this one; it stops with the last config (see sharedStore). If
// this config was the engine's but another stays (a reload that failed
// after this app started is being rolled back), the one that stays gets
// the engine back.
func (a *App) Stop() error {
	s := a.shared
	s.mu.Lock()
	defer s.mu.Unlock()
	i := slices.Index(s.running, a)
	if i < 0 {
		return nil
	}
	wasCurrent := i == len(s.running)-1
	s.running = slices.Delete(s.running, i, i+1)
	if wasCurrent && len(s.running) > 0 {
		return s.running[len(s.running)-1].configure(s.open.Load())
	}
	return nil
}

// Cleanup releases this config's hold on the database; the last one out
// closes it.
func (a *App) Cleanup() error {
	if a.shared == nil {
		return nil
	}
	a.shared = nil
	_, err := stores.Delete(a.dir)
	return err
}

// appFrom loads the webhooks app from a module's context, creating it with
// defaults when the config has no `webhooks` global option.
func appFrom(ctx caddy.Context) (*App, error) {
	v, err := ctx.App("webhooks")
	if err != nil {
		return nil, err
	}
	app, ok := v.(*App)
	if !ok || app.shared == nil {
		return nil, fmt.Errorf("webhooks app is not available")
	}
	return app, nil
}

// Interface guards
var (
	_ caddy.App          = (*App)(nil)
	_ caddy.Provisioner  = (*App)(nil)
	_ caddy.CleanerUpper = (*App)(nil)
)
