//go:build !race

package caddywebhook

const raceEnabled = false
