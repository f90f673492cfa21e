package caddywebhook

import (
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/dustin/go-humanize"
)

func init() {
	httpcaddyfile.RegisterGlobalOption("webhooks", parseGlobalWebhooks)
	httpcaddyfile.RegisterHandlerDirective("webhook_ingest", parseIngest)
	// Right after basic_auth: authentication has run, and the handler still
	// comes before terminal handlers such as reverse_proxy and respond, in
	// whatever order a block lists them.
	httpcaddyfile.RegisterDirectiveOrder("webhook_ingest", httpcaddyfile.After, "basic_auth")
}

// parseGlobalWebhooks sets up the webhooks app from the global option:
//
//	webhooks {
//	    storage_dir <dir>
//	}
func parseGlobalWebhooks(d *caddyfile.Dispenser, existing any) (any, error) {
	if existing != nil {
		return nil, d.Err("the webhooks global option may appear only once")
	}
	app := new(App)
	if err := app.UnmarshalCaddyfile(d); err != nil {
		return nil, err
	}
	return httpcaddyfile.App{Name: "webhooks", Value: caddyconfig.JSON(app, nil)}, nil
}

// UnmarshalCaddyfile sets up the app from Caddyfile tokens.
func (a *App) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // option name
	if d.NextArg() {
		return d.ArgErr()
	}
	for d.NextBlock(0) {
		switch d.Val() {
		case "storage_dir":
			if a.StorageDir != "" {
				return d.Err("storage_dir specified more than once")
			}
			if !d.AllArgs(&a.StorageDir) {
				return d.ArgErr()
			}
		default:
			return d.Errf("unrecognized webhooks option %q", d.Val())
		}
	}
	return nil
}

func parseIngest(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	m := new(Ingest)
	err := m.UnmarshalCaddyfile(h.Dispenser)
	return m, err
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens:
//
//	webhook_ingest {
//	    access_key <key> [<key>…]
//	    client <name> <client-key> [interval <duration>]
//	    interval <duration>
//	    max_body <size>
//	}
//
// Errors never quote a key.
func (h *Ingest) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // directive name
	if d.NextArg() {
		return d.Err("webhook_ingest takes no arguments, only a block")
	}
	var sawInterval, sawMaxBody bool
	for d.NextBlock(0) {
		switch d.Val() {
		case "access_key":
			keys := d.RemainingArgs()
			if len(keys) == 0 {
				return d.Err("access_key needs at least one key")
			}
			h.AccessKeys = append(h.AccessKeys, keys...)
		case "client":
			c, err := parseIngestClient(d)
			if err != nil {
				return err
			}
			h.Clients = append(h.Clients, c)
		case "interval":
			if sawInterval {
				return d.Err("interval specified more than once")
			}
			sawInterval = true
			dur, err := durationArg(d)
			if err != nil {
				return err
			}
			h.Interval = dur
		case "max_body":
			if sawMaxBody {
				return d.Err("max_body specified more than once")
			}
			sawMaxBody = true
			n, err := sizeArg(d)
			if err != nil {
				return err
			}
			h.MaxBody = n
		default:
			return d.Errf("unrecognized webhook_ingest option %q", d.Val())
		}
	}
	if len(h.AccessKeys) == 0 {
		return d.Err("webhook_ingest needs at least one access_key")
	}
	if len(h.Clients) == 0 {
		return d.Err("webhook_ingest needs at least one client")
	}
	return nil
}

func parseIngestClient(d *caddyfile.Dispenser) (IngestClient, error) {
	args := d.RemainingArgs()
	var c IngestClient
	switch {
	case len(args) == 0:
		return c, d.Err("client needs a name and a key: client <name> <client-key> [interval <duration>]")
	case len(args) == 1:
		return c, d.Errf("client %q: missing client key", args[0])
	case len(args) == 2:
	case len(args) == 4 && args[2] == "interval":
		dur, err := caddy.ParseDuration(args[3])
		if err != nil {
			return c, d.Errf("client %q: invalid interval %q: %v", args[0], args[3], err)
		}
		if dur < 0 {
			return c, d.Errf("client %q: interval must not be negative", args[0])
		}
		iv := caddy.Duration(dur)
		c.Interval = &iv
	default:
		return c, d.Errf("client %q: expected client <name> <client-key> [interval <duration>]", args[0])
	}
	c.Name, c.Key = args[0], args[1]
	return c, nil
}

func durationArg(d *caddyfile.Dispenser) (caddy.Duration, error) {
	name := d.Val()
	var s string
	if !d.AllArgs(&s) {
		return 0, d.ArgErr()
	}
	dur, err := caddy.ParseDuration(s)
	if err != nil {
		return 0, d.Errf("invalid %s %q: %v", name, s, err)
	}
	if dur < 0 {
		return 0, d.Errf("%s must not be negative", name)
	}
	return caddy.Duration(dur), nil
}

func sizeArg(d *caddyfile.Dispenser) (int64, error) {
	name := d.Val()
	var s string
	if !d.AllArgs(&s) {
		return 0, d.ArgErr()
	}
	n, err := humanize.ParseBytes(s)
	if err != nil || n == 0 || n > 1<<40 {
		return 0, d.Errf("invalid %s %q: want a size such as 10MB", name, s)
	}
	return int64(n), nil
}

// Interface guards
var (
	_ caddyfile.Unmarshaler = (*App)(nil)
	_ caddyfile.Unmarshaler = (*Ingest)(nil)
)
