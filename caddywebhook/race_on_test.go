//go:build race

package caddywebhook

// raceEnabled makes the test-built Caddy binary share the race-instrumented
// build cache of the test binary itself.
const raceEnabled = true
