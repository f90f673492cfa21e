#!/usr/bin/env bash
# The test suite: unit tests, Caddyfile parsing, and end-to-end tests that
# run a real Caddy (in-process and as a built binary) against loopback
# upstreams. Extra arguments go to `go test` (e.g. -run, -v).
set -euo pipefail
cd "$(dirname "$0")"
# caddytest logs every admin call on stderr; keep the output readable and
# the full log for failures.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if ! go test -race -count=1 -timeout 10m "$@" ./... >"$log" 2>&1; then
	grep -v -e '^{"level"' -e 'caddytest: config load time' "$log" | grep -v '^\s*$'
	echo "FAIL (full output above, caddy's own log lines removed)" >&2
	exit 1
fi
grep -E '^(ok|---|FAIL|\?)' "$log"
