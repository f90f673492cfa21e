package store

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/dgraph-io/badger/v4/options"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// needle is a secret that must not be readable from the data directory.
var needle = []byte("FFCPUG2A-secret-token-needle")

func writeNeedle(t *testing.T, dir string, key []byte) {
	t.Helper()
	db := mustOpen(t, dir, Options{EncryptionKey: key})
	err := db.Update(func(txn *badger.Txn) error {
		return txn.Set([]byte("delivery/sub/x"), append([]byte(`{"token":"`), append(needle, '"', '}')...))
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
}

// mustOpen opens the store in dir or ends the test.
func mustOpen(t testing.TB, dir string, opts Options) *DB {
	t.Helper()
	db, err := Open(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	return db
}

func dirContains(t *testing.T, dir string, b []byte) bool {
	t.Helper()
	found := false
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			data, _ := os.ReadFile(p)
			found = found || bytes.Contains(data, b)
		}
		return nil
	})
	return found
}

func TestEncryptionAtRest(t *testing.T) {
	plain := t.TempDir()
	writeNeedle(t, plain, nil)
	if !dirContains(t, plain, needle) {
		t.Fatal("control: the secret should be readable without encryption")
	}

	key, err := ParseEncryptionKey(base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{7}, 32)))
	if err != nil {
		t.Fatal(err)
	}
	enc := t.TempDir()
	writeNeedle(t, enc, key)
	if dirContains(t, enc, needle) {
		t.Fatal("the secret is readable from the encrypted data directory")
	}
	// It reads back with the key...
	db := mustOpen(t, enc, Options{EncryptionKey: key})
	if v := readValue(t, db, "delivery/sub/x"); !strings.Contains(v, string(needle)) {
		t.Fatalf("read back %q", v)
	}
	db.Close()
	// ...and not with another one.
	other, _ := ParseEncryptionKey(base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{8}, 32)))
	if _, err := Open(enc, Options{EncryptionKey: other}); err == nil || !strings.Contains(err.Error(), "encryption_key does not match") {
		t.Fatalf("wrong key: %v", err)
	}
}

// CheckDir refuses what Open would, without opening: a file in the way and
// a key that does not match the data, also while the database is open.
func TestCheckDir(t *testing.T) {
	keyA, keyB := bytes.Repeat([]byte{7}, 32), bytes.Repeat([]byte{8}, 16)
	enc, plain := t.TempDir(), t.TempDir()
	writeNeedle(t, enc, keyA)
	writeNeedle(t, plain, nil)
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	open, err := Open(enc, Options{EncryptionKey: keyA}) // as a running Caddy holds it
	if err != nil {
		t.Fatal(err)
	}
	defer open.Close()

	missing := filepath.Join(t.TempDir(), "new", "dir")
	const mismatch = "encryption_key does not match"
	const noneMatches = "neither the encryption_key nor any previous key matches"
	for _, c := range []struct {
		name     string
		dir      string
		key      []byte
		previous [][]byte
		want     string // "": accepted
	}{
		{"missing", missing, keyA, nil, ""},
		{"empty", t.TempDir(), keyA, nil, ""},
		{"right key", enc, keyA, nil, ""},
		{"right key, with previous", enc, keyA, [][]byte{keyB}, ""},
		{"no key, none used", plain, nil, nil, ""},
		{"other key", enc, keyB, nil, mismatch},
		{"no key, one used", enc, nil, nil, mismatch},
		{"key, none used", plain, keyA, nil, mismatch},
		{"new key, the one used as previous", enc, keyB, [][]byte{keyB, keyA}, ""},
		{"new key, other previous", enc, keyB, [][]byte{bytes.Repeat([]byte{9}, 32)}, noneMatches},
		{"key and previous, none used", plain, keyA, [][]byte{keyB}, noneMatches},
		{"a file", file, nil, nil, "is not a directory"},
		{"under a file", filepath.Join(file, "sub"), nil, nil, "not a directory"},
	} {
		err := CheckDir(c.dir, c.key, c.previous)
		if c.want == "" && err != nil || c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)) {
			t.Errorf("%s: %v, want %q", c.name, err, c.want)
		}
		if err != nil && (strings.Contains(err.Error(), string(keyA)) || strings.Contains(err.Error(), base64.StdEncoding.EncodeToString(keyA))) {
			t.Errorf("%s: the key is in the error: %v", c.name, err)
		}
	}
	// Checking created nothing: Open would, CheckDir must not.
	if _, err := os.Stat(filepath.Dir(missing)); !os.IsNotExist(err) {
		t.Errorf("stat: %v", err)
	}
}

func TestParseEncryptionKey(t *testing.T) {
	for in, want := range map[string]string{
		"not base64!": "must be base64",
		base64.StdEncoding.EncodeToString([]byte("short")): "16, 24 or 32 bytes, not 5",
	} {
		_, err := ParseEncryptionKey(in)
		if err == nil || !strings.Contains(err.Error(), want) || strings.Contains(err.Error(), in) {
			t.Errorf("%q: %v", in, err)
		}
	}
}

// A database whose directory disappeared cannot flush; badger then retries
// forever, and Close gives up with an error naming the directory instead
// of hanging Caddy's stop or reload.
func TestCloseGivesUpWhenTheDirectoryIsGone(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	db := mustOpen(t, dir, Options{CloseTimeout: time.Second})
	err := db.Update(func(txn *badger.Txn) error { return txn.Set([]byte("ingest/window/a"), []byte("x")) })
	if err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	err = db.Close()
	if err == nil || !strings.Contains(err.Error(), dir) {
		t.Fatalf("Close: %v, want an error naming %s", err, dir)
	}
	if again := db.Close(); again != err {
		t.Fatalf("second Close: %v", again)
	}
}

// A database whose tables earlier versions wrote Snappy-compressed is read
// as it is: badger records each table's compression in the table.
func TestReadsTablesWrittenCompressed(t *testing.T) {
	dir := t.TempDir()
	old, err := badger.Open(badger.DefaultOptions(dir).WithLogger(nil).WithCompression(options.Snappy))
	if err != nil {
		t.Fatal(err)
	}
	value := bytes.Repeat([]byte(`{"orderId":"PHS84FJAG5U"}`), 40)
	err = old.Update(func(txn *badger.Txn) error {
		for i := range 100 {
			if err := txn.Set([]byte(fmt.Sprintf("delivery/d/%03d", i)), value); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := old.Close(); err != nil { // flushes the memtable to a table
		t.Fatal(err)
	}
	if tables, _ := filepath.Glob(filepath.Join(dir, "*.sst")); len(tables) == 0 {
		t.Fatal("no table written: the test would read the write-ahead log instead")
	}
	if dirContains(t, dir, value) {
		t.Fatal("the table is not compressed: the test would prove nothing")
	}
	db := mustOpen(t, dir, Options{})
	defer db.Close()
	err = db.View(func(txn *badger.Txn) error {
		for i := range 100 {
			item, err := txn.Get([]byte(fmt.Sprintf("delivery/d/%03d", i)))
			if err != nil {
				return err
			}
			got, err := item.ValueCopy(nil)
			if err != nil {
				return err
			}
			if !bytes.Equal(got, value) {
				return fmt.Errorf("key %d: value changed", i)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// Badger's warnings and errors reach Caddy's log at their own level, its
// info at debug, without the newline badger ends its formats with; its
// debug trace is dropped.
func TestBadgerLogger(t *testing.T) {
	core, logs := observer.New(zapcore.DebugLevel)
	var l badger.Logger = badgerLogger{zap.New(core)}
	l.Errorf("e %d\n", 1)
	l.Warningf("w %s\n", "x")
	l.Infof("i")
	l.Debugf("d\n")
	want := []struct {
		level zapcore.Level
		msg   string
	}{{zapcore.ErrorLevel, "e 1"}, {zapcore.WarnLevel, "w x"}, {zapcore.DebugLevel, "i"}}
	got := logs.All()
	if len(got) != len(want) {
		t.Fatalf("%d entries, want %d", len(got), len(want))
	}
	for i, w := range want {
		if got[i].Level != w.level || got[i].Message != w.msg {
			t.Errorf("entry %d: %v %q, want %v %q", i, got[i].Level, got[i].Message, w.level, w.msg)
		}
	}
}

func TestSyncWritesReachesBadger(t *testing.T) {
	for _, sync := range []bool{false, true} {
		db := mustOpen(t, t.TempDir(), Options{SyncWrites: sync})
		if got := db.Opts().SyncWrites; got != sync {
			t.Errorf("SyncWrites %v: badger opened with %v", sync, got)
		}
		if err := db.Update(func(txn *badger.Txn) error { return txn.Set([]byte("k"), []byte("v")) }); err != nil {
			t.Errorf("SyncWrites %v: %v", sync, err)
		}
		if err := db.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

// Badger's own lines come under "badger", below the store's logger, and
// not on stderr in badger's format.
func TestBadgerLogsBelowTheStore(t *testing.T) {
	core, logs := observer.New(zapcore.WarnLevel)
	db := mustOpen(t, t.TempDir(), Options{Logger: zap.New(core).Named("webhooks.store")})
	defer db.Close()
	db.Opts().Logger.Warningf("a warning from badger")
	entries := logs.FilterMessage("a warning from badger").All()
	if len(entries) != 1 || entries[0].LoggerName != "webhooks.store.badger" {
		t.Fatalf("logged %+v", entries)
	}
}
