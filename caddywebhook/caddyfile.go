package caddywebhook

import (
	"strconv"

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
	httpcaddyfile.RegisterHandlerDirective("webhook_publish", parsePublish)
	httpcaddyfile.RegisterDirectiveOrder("webhook_publish", httpcaddyfile.After, "basic_auth")
	httpcaddyfile.RegisterHandlerDirective("webhook_api", parseAPI)
	// After forward_auth, which itself follows basic_auth: `tenant` usually
	// names a value that authentication sets (a placeholder, or a header
	// forward_auth copies), so it must not be read before authentication
	// has run.
	httpcaddyfile.RegisterDirectiveOrder("webhook_api", httpcaddyfile.After, "forward_auth")
}

// parseGlobalWebhooks sets up the webhooks app from the global option
// (see App.UnmarshalCaddyfile).
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

// UnmarshalCaddyfile sets up the app from Caddyfile tokens:
//
//	webhooks {
//	    storage_dir <dir>
//	    encryption_key <base64 key> [<previous key>…]
//	    min_free_space <size>|off
//	    sync_writes
//	    workers <n>
//	    endpoint_concurrency <n>
//	    timeout <duration>
//	    retry <d1> <d2> …
//	    disable_after <duration>
//	    retention <duration>
//	    allow_private_targets
//	    subscription <name> {
//	        url <url>
//	        events <event> [<event>…]
//	        tenant <id>
//	        location <id>
//	        secret_header <header> <secret>
//	        token <token>
//	        basic <id> <secret>
//	        signing_secret <whsec_…> [<previous whsec_…>…]
//	        envelope data
//	    }
//	}
func (a *App) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // option name
	if d.NextArg() {
		return d.ArgErr()
	}
	seen := map[string]bool{}
	names := map[string]bool{} // subscription names: configs may hold 100k
	for d.NextBlock(0) {
		opt := d.Val()
		if opt != "subscription" {
			if seen[opt] {
				return d.Errf("%s specified more than once", opt)
			}
			seen[opt] = true
		}
		var err error
		switch opt {
		case "storage_dir":
			if !d.AllArgs(&a.StorageDir) {
				return d.ArgErr()
			}
		case "encryption_key":
			keys := d.RemainingArgs()
			if len(keys) == 0 {
				return d.Err("encryption_key needs a key, then any previous ones the data may still be under")
			}
			a.EncryptionKey = keys[0]
			if len(keys) > 1 {
				a.PreviousEncryptionKeys = keys[1:]
			}
		case "min_free_space":
			a.MinFreeSpace, err = offOr(d, sizeArg)
		case "workers":
			a.Workers, err = positiveIntArg(d)
		case "endpoint_concurrency":
			a.EndpointConcurrency, err = positiveIntArg(d)
		case "timeout":
			a.Timeout, err = positiveDurationArg(d)
		case "disable_after":
			a.DisableAfter, err = positiveDurationArg(d)
		case "retention":
			a.Retention, err = positiveDurationArg(d)
		case "retry":
			a.Retry, err = retryArgs(d)
		case "allow_private_targets":
			a.AllowPrivateTargets, err = flagArg(d)
		case "sync_writes":
			a.SyncWrites, err = flagArg(d)
		case "subscription":
			var sc SubscriptionConfig
			if sc, err = parseSubscription(d); err == nil {
				if names[sc.Name] {
					return d.Errf("subscription %q is defined twice", sc.Name)
				}
				names[sc.Name] = true
				a.Subscriptions = append(a.Subscriptions, sc)
			}
		default:
			return d.Errf("unrecognized webhooks option %q", opt)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func parseSubscription(d *caddyfile.Dispenser) (SubscriptionConfig, error) {
	var sc SubscriptionConfig
	if !d.NextArg() {
		return sc, d.Err("subscription needs a name: subscription <name> { … }")
	}
	sc.Name = d.Val()
	if d.NextArg() {
		return sc, d.Errf("subscription %q: unexpected argument %q before the block", sc.Name, d.Val())
	}
	seen := map[string]bool{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		opt := d.Val()
		if seen[opt] {
			return sc, d.Errf("subscription %q: %s specified more than once", sc.Name, opt)
		}
		seen[opt] = true
		args := d.RemainingArgs()
		want := map[string]int{"url": 1, "tenant": 1, "location": 1, "secret_header": 2, "token": 1, "basic": 2, "envelope": 1}
		n, known := want[opt]
		switch {
		case opt == "events":
			if len(args) == 0 {
				return sc, d.Errf("subscription %q: events needs at least one event (\"*\" for all)", sc.Name)
			}
			sc.Events = args
			continue
		case opt == "signing_secret":
			if len(args) == 0 {
				return sc, d.Errf("subscription %q: signing_secret needs a secret, then any previous ones still signing", sc.Name)
			}
			sc.SigningSecret = args[0]
			if len(args) > 1 {
				sc.PreviousSigningSecrets = args[1:]
			}
			continue
		case !known:
			return sc, d.Errf("subscription %q: unrecognized option %q", sc.Name, opt)
		case len(args) != n:
			return sc, d.Errf("subscription %q: %s takes %d argument(s)", sc.Name, opt, n)
		}
		switch opt {
		case "url":
			sc.URL = args[0]
		case "tenant":
			sc.Tenant = args[0]
		case "location":
			sc.Location = args[0]
		case "secret_header":
			sc.SecretHeader, sc.Secret = args[0], args[1]
		case "token":
			sc.Token = args[0]
		case "basic":
			sc.BasicUser, sc.BasicPassword = args[0], args[1]
		case "envelope":
			if args[0] != "data" {
				return sc, d.Errf("subscription %q: envelope must be \"data\"", sc.Name)
			}
			sc.Envelope = args[0]
		}
	}
	if sc.URL == "" {
		return sc, d.Errf("subscription %q: url is required", sc.Name)
	}
	if len(sc.Events) == 0 {
		return sc, d.Errf("subscription %q: events is required (\"*\" for all)", sc.Name)
	}
	return sc, nil
}

func parseAPI(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	m := new(API)
	err := m.UnmarshalCaddyfile(h.Dispenser)
	return m, err
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens:
//
//	webhook_api {
//	    dialect tiki|doshii
//	    tenant <placeholder>
//	    verify
//	    max_body <size>
//	    max_webhooks <n>|off
//	}
func (h *API) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // directive name
	if d.NextArg() {
		return d.Err("webhook_api takes no arguments, only a block")
	}
	seen := map[string]bool{}
	for d.NextBlock(0) {
		opt := d.Val()
		if seen[opt] {
			return d.Errf("%s specified more than once", opt)
		}
		seen[opt] = true
		switch opt {
		case "dialect":
			if !d.AllArgs(&h.Dialect) {
				return d.ArgErr()
			}
			if h.Dialect != "tiki" && h.Dialect != "doshii" {
				return d.Errf("unknown dialect %q (want tiki or doshii)", h.Dialect)
			}
		case "tenant":
			if !d.AllArgs(&h.Tenant) {
				return d.ArgErr()
			}
		case "verify":
			if d.NextArg() {
				return d.ArgErr()
			}
			h.Verify = true
		case "max_body":
			n, err := sizeArg(d)
			if err != nil {
				return err
			}
			h.MaxBody = n
		case "max_webhooks":
			n, err := offOr(d, positiveIntArg)
			if err != nil {
				return err
			}
			h.MaxWebhooks = n
		default:
			return d.Errf("unrecognized webhook_api option %q", opt)
		}
	}
	if h.Dialect == "" {
		return d.Err("webhook_api needs a dialect (tiki or doshii)")
	}
	return nil
}

func parsePublish(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	m := new(Publish)
	err := m.UnmarshalCaddyfile(h.Dispenser)
	return m, err
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens:
//
//	webhook_publish [{
//	    max_body <size>
//	}]
func (h *Publish) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // directive name
	if d.NextArg() {
		return d.Err("webhook_publish takes no arguments")
	}
	for d.NextBlock(0) {
		switch d.Val() {
		case "max_body":
			if h.MaxBody != 0 {
				return d.Err("max_body specified more than once")
			}
			n, err := sizeArg(d)
			if err != nil {
				return err
			}
			h.MaxBody = n
		default:
			return d.Errf("unrecognized webhook_publish option %q", d.Val())
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
//	    client <name> <client-key> [previous <key>]… [interval <duration>]
//	    interval <duration>
//	    max_body <size>
//	    scope <name>
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
		case "scope":
			if h.Scope != "" {
				return d.Err("scope specified more than once")
			}
			if !d.AllArgs(&h.Scope) || h.Scope == "" {
				return d.Err("scope needs one name: scope <name>")
			}
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

// clientSyntax is the form of a client line, quoted in its errors.
const clientSyntax = "client <name> <client-key> [previous <key>]… [interval <duration>]"

func parseIngestClient(d *caddyfile.Dispenser) (IngestClient, error) {
	args := d.RemainingArgs()
	var c IngestClient
	switch len(args) {
	case 0:
		return c, d.Err("client needs a name and a key: " + clientSyntax)
	case 1:
		return c, d.Errf("client %q: missing client key", args[0])
	}
	c.Name, c.Key = args[0], args[1]
	for rest := args[2:]; len(rest) > 0; rest = rest[2:] {
		if len(rest) < 2 || (rest[0] != "previous" && rest[0] != "interval") {
			return c, d.Errf("client %q: expected %s", c.Name, clientSyntax)
		}
		if rest[0] == "previous" {
			c.PreviousKeys = append(c.PreviousKeys, rest[1])
			continue
		}
		if c.Interval != nil {
			return c, d.Errf("client %q: interval specified more than once", c.Name)
		}
		dur, err := caddy.ParseDuration(rest[1])
		if err != nil {
			return c, d.Errf("client %q: invalid interval %q: %v", c.Name, rest[1], err)
		}
		if dur < 0 {
			return c, d.Errf("client %q: interval must not be negative", c.Name)
		}
		iv := caddy.Duration(dur)
		c.Interval = &iv
	}
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

func positiveDurationArg(d *caddyfile.Dispenser) (caddy.Duration, error) {
	name := d.Val()
	dur, err := durationArg(d)
	if err == nil && dur == 0 {
		err = d.Errf("%s must be positive", name)
	}
	return dur, err
}

func positiveIntArg(d *caddyfile.Dispenser) (int, error) {
	name := d.Val()
	var s string
	if !d.AllArgs(&s) {
		return 0, d.ArgErr()
	}
	n, err := strconv.Atoi(s)
	if err != nil || n <= 0 {
		return 0, d.Errf("invalid %s %q: want a positive number", name, s)
	}
	return n, nil
}

func retryArgs(d *caddyfile.Dispenser) ([]caddy.Duration, error) {
	args := d.RemainingArgs()
	if len(args) == 0 {
		return nil, d.Err("retry needs at least one delay, e.g. retry 5s 5m 30m")
	}
	out := make([]caddy.Duration, 0, len(args))
	for _, a := range args {
		dur, err := caddy.ParseDuration(a)
		if err != nil || dur <= 0 {
			return nil, d.Errf("invalid retry delay %q: want a positive duration", a)
		}
		out = append(out, caddy.Duration(dur))
	}
	return out, nil
}

// flagArg reads an option that is on by being there and takes no value.
func flagArg(d *caddyfile.Dispenser) (bool, error) {
	if d.NextArg() {
		return false, d.ArgErr()
	}
	return true, nil
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

// offOr reads an option's one argument: off as -1 (off in JSON too),
// anything else as arg reads it (min_free_space <size>|off,
// max_webhooks <n>|off).
func offOr[T int | int64](d *caddyfile.Dispenser, arg func(*caddyfile.Dispenser) (T, error)) (T, error) {
	if d.CountRemainingArgs() == 1 && d.NextArg() {
		if d.Val() == "off" {
			return -1, nil
		}
		d.Prev()
	}
	return arg(d)
}

// Interface guards
var (
	_ caddyfile.Unmarshaler = (*App)(nil)
	_ caddyfile.Unmarshaler = (*Ingest)(nil)
	_ caddyfile.Unmarshaler = (*Publish)(nil)
	_ caddyfile.Unmarshaler = (*API)(nil)
)
