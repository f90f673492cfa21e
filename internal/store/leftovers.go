package store

import (
	"os"
	"path/filepath"
	"strings"

	"go.uber.org/zap"
)

// removeEmptyLogs removes the empty write-ahead and value log files
// (*.mem, *.vlog) that a kill can leave in dir, before badger opens it.
// Badger empties a flushed memtable's log and then removes it, and
// creates a log file and then sizes it; killed between the two it leaves
// an empty file, and then refuses to open the directory ("Create a new
// file", badger issue #2207) until something opens it twice. An empty
// log file holds nothing, so removing it loses nothing.
//
// It holds badger's own lock (flock on the directory) while it looks, so
// that the files of a database another process has open, which may be
// empty for a moment while it creates them, are never touched: then it
// does nothing, and badger.Open reports the lock. On systems where badger
// locks the directory its own way (Windows) it does nothing either: an
// empty log file then makes the first start fail, that failed open sizes
// the file, and the next start succeeds.
func removeEmptyLogs(dir string, log *zap.Logger) {
	unlock, err := lockDir(dir)
	if err != nil {
		return // locked, or a system where badger locks its own way
	}
	defer unlock()
	entries, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	removed := false
	for _, e := range entries {
		name := e.Name()
		if !e.Type().IsRegular() || !(strings.HasSuffix(name, ".mem") || strings.HasSuffix(name, ".vlog")) {
			continue
		}
		if fi, err := e.Info(); err != nil || fi.Size() != 0 {
			continue
		}
		if err := os.Remove(filepath.Join(dir, name)); err != nil {
			log.Warn("could not remove an empty log file left by a kill; badger may refuse to open the database", zap.String("file", name), zap.Error(err))
			continue
		}
		removed = true
		log.Warn("removed an empty log file left by a kill", zap.String("file", name), zap.String("dir", dir))
	}
	if removed {
		_ = syncDir(dir) // the removals outlast a power cut before badger writes anew
	}
}
