// Package caddywebhook adapts the ingest and delivery engines to Caddy: it
// registers the `webhooks` app and the HTTP handlers, parses the Caddyfile
// and translates requests into calls to the domain packages.
package caddywebhook

import (
	"fmt"
	"path/filepath"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/hookgate/caddy-webhook/ingest"
	"github.com/hookgate/caddy-webhook/internal/store"
)

func init() {
	caddy.RegisterModule(App{})
}

// App is the `webhooks` app. It owns the embedded badger database that
// holds push windows and the delivery queue, one per Caddy instance. The
// open database is shared across config reloads: Caddy provisions the new
// config while the old one still runs, and badger allows only one opener
// per directory.
type App struct {
	// Where the database lives. Default: `webhook` under Caddy's data
	// directory. Placeholders such as {env.*} are replaced.
	StorageDir string `json:"storage_dir,omitempty"`

	dir    string
	shared *sharedStore
	logger *zap.Logger
}

// CaddyModule returns the Caddy module information.
func (App) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "webhooks",
		New: func() caddy.Module { return new(App) },
	}
}

// stores holds one open database per directory, reference-counted by the
// apps (old and new config during a reload) that use it.
var stores = caddy.NewUsagePool()

// sharedStore is everything that must outlive a single config: the database
// and the in-memory state that has to stay consistent with it.
type sharedStore struct {
	db      *store.DB
	windows *ingest.BadgerWindows
	leases  *ingest.Leases
}

// Destruct closes the database once the last config using it is gone.
func (s *sharedStore) Destruct() error { return s.db.Close() }

// Provision opens (or joins) the database.
func (a *App) Provision(ctx caddy.Context) error {
	a.logger = ctx.Logger()
	dir, err := a.storageDir()
	if err != nil {
		return err
	}
	val, loaded, err := stores.LoadOrNew(dir, func() (caddy.Destructor, error) {
		// Badger outlives this config, so it logs through the process-wide
		// logger rather than this config's.
		db, err := store.Open(dir, store.Options{Logger: caddy.Log().Named("webhooks.badger")})
		if err != nil {
			return nil, err
		}
		return &sharedStore{
			db:      db,
			windows: ingest.NewBadgerWindows(db.DB),
			leases:  ingest.NewLeases(),
		}, nil
	})
	if err != nil {
		return fmt.Errorf("webhooks: %w", err)
	}
	a.dir, a.shared = dir, val.(*sharedStore)
	a.logger.Info("webhook store ready", zap.String("dir", dir), zap.Bool("reused", loaded))
	return nil
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

// Start implements caddy.App.
func (a *App) Start() error { return nil }

// Stop implements caddy.App.
func (a *App) Stop() error { return nil }

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
	_ caddy.Destructor   = (*sharedStore)(nil)
)
