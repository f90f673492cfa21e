// Command caddy is Caddy with its standard modules plus this plugin, pinned
// to the versions in go.mod. It is what `xcaddy build --with
// github.com/hookgate/caddy-webhook` produces, buildable with plain `go`.
package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/hookgate/caddy-webhook"
)

func main() {
	caddycmd.Main()
}
