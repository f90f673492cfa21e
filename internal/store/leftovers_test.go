package store

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dgraph-io/badger/v4"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// A kill while badger deletes a flushed memtable's log (it truncates the
// file, then removes it) or creates a log file (it creates it, then sizes
// it) leaves an empty file behind, and badger then refuses to open the
// directory with "Create a new file" (badger issue #2207). Seen after a
// kill -9 of Caddy draining a backlog in a 300 MB container. Open removes
// such files and keeps everything else.
func TestOpenAfterAKillLeftEmptyLogs(t *testing.T) {
	dir := t.TempDir()
	db := mustOpen(t, dir, Options{})
	if err := db.Update(func(txn *badger.Txn) error { return txn.Set([]byte("delivery/q/1"), []byte("kept")) }); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	empty := []string{"00001.mem", "000000.vlog"}
	for _, name := range empty {
		if err := os.WriteFile(filepath.Join(dir, name), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}

	core, logs := observer.New(zapcore.InfoLevel)
	db, err := Open(dir, Options{Logger: zap.New(core)})
	if err != nil {
		t.Fatalf("open after empty log files were left: %v", err)
	}
	defer db.Close()
	err = db.View(func(txn *badger.Txn) error {
		item, err := txn.Get([]byte("delivery/q/1"))
		if err != nil {
			return err
		}
		return item.Value(func(v []byte) error {
			if string(v) != "kept" {
				t.Errorf("value %q after the reopen", v)
			}
			return nil
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	removed := logs.FilterMessageSnippet("empty").All()
	if len(removed) != len(empty) {
		t.Fatalf("logged %d removals, want %d: %v", len(removed), len(empty), logs.All())
	}
	for _, e := range removed {
		if e.Level != zapcore.WarnLevel || !strings.HasPrefix(e.ContextMap()["file"].(string), "0000") {
			t.Errorf("removal logged as %v %v", e.Level, e.ContextMap())
		}
	}
}

// While another process has the database open, its empty files are its
// own (one being created, say): a second Open leaves them and fails on
// badger's directory lock, as before.
func TestOpenLeavesALockedDirectoryAlone(t *testing.T) {
	dir := t.TempDir()
	db := mustOpen(t, dir, Options{})
	defer db.Close()
	creating := filepath.Join(dir, "00099.mem")
	if err := os.WriteFile(creating, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(dir, Options{}); err == nil || !strings.Contains(err.Error(), "Cannot acquire directory lock") {
		t.Fatalf("second open: %v, want badger's lock error", err)
	}
	if _, err := os.Stat(creating); err != nil {
		t.Fatalf("the open database's file: %v", err)
	}
}
