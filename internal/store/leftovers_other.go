//go:build !(linux || darwin || freebsd)

package store

import "go.uber.org/zap"

// removeEmptyLogs does nothing here: badger locks the directory in a way
// of its own on these systems, so the files cannot be looked at safely
// before it opens them. An empty log file left by a kill then makes the
// first start fail ("Create a new file", badger issue #2207); that failed
// open sizes the file, and the next start succeeds.
func removeEmptyLogs(dir string, log *zap.Logger) {}
