// Package webhook is what `xcaddy build --with github.com/hookgate/caddy-webhook`
// imports: it registers the plugin's Caddy modules (the `webhooks` app and
// its HTTP handlers), which live in the caddywebhook package.
package webhook

import (
	_ "github.com/hookgate/caddy-webhook/caddywebhook"
)
