package store

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"strings"
	"testing"

	"github.com/dgraph-io/badger/v4"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

var (
	keyOld   = bytes.Repeat([]byte{7}, 32)
	keyNew   = bytes.Repeat([]byte{8}, 16) // another length: AES-128 after AES-256
	keyOther = bytes.Repeat([]byte{9}, 24)
)

// readValue returns the value of key, or "" if there is none.
func readValue(t *testing.T, db *DB, key string) string {
	t.Helper()
	var v []byte
	err := db.View(func(txn *badger.Txn) error {
		item, err := txn.Get([]byte(key))
		if err != nil {
			return err
		}
		v, err = item.ValueCopy(nil)
		return err
	})
	if err != nil {
		t.Fatalf("reading %s: %v", key, err)
	}
	return string(v)
}

// A store written under an earlier key opens with the new one when the
// earlier one is listed as previous, and from then on with the new one
// alone; the old one no longer opens it.
func TestOpenReKeysAStoreWrittenUnderAPreviousKey(t *testing.T) {
	dir := t.TempDir()
	writeNeedle(t, dir, keyOld)

	core, logs := observer.New(zapcore.InfoLevel)
	db, err := Open(dir, Options{EncryptionKey: keyNew, PreviousKeys: [][]byte{keyOther, keyOld}, Logger: zap.New(core)})
	if err != nil {
		t.Fatalf("open with the new key, the old one as previous: %v", err)
	}
	if v := readValue(t, db, "delivery/sub/x"); !strings.Contains(v, string(needle)) {
		t.Fatalf("read back %q", v)
	}
	if err := db.Update(func(txn *badger.Txn) error {
		return txn.Set([]byte("delivery/after"), []byte("written under the new key"))
	}); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	rekeyed := logs.FilterMessageSnippet("re-keyed").All()
	if len(rekeyed) != 1 || rekeyed[0].ContextMap()["previous_key"] != int64(2) {
		t.Fatalf("re-key log lines: %v", logs.All())
	}
	for _, e := range logs.All() {
		line := fmt.Sprint(e.Message, e.ContextMap())
		for _, k := range [][]byte{keyOld, keyNew, keyOther} {
			if strings.Contains(line, string(k)) || strings.Contains(line, base64.StdEncoding.EncodeToString(k)) {
				t.Errorf("a key is in the log: %s", line)
			}
		}
	}

	logs.TakeAll()
	db, err = Open(dir, Options{EncryptionKey: keyNew, PreviousKeys: [][]byte{keyOld}, Logger: zap.New(core)})
	if err != nil {
		t.Fatal(err)
	}
	db.Close()
	if n := logs.FilterMessageSnippet("re-keyed").Len(); n != 0 {
		t.Errorf("re-keyed again a store already under the key (%d lines)", n)
	}

	db = mustOpen(t, dir, Options{EncryptionKey: keyNew})
	if v := readValue(t, db, "delivery/sub/x"); !strings.Contains(v, string(needle)) {
		t.Fatalf("with the new key alone, read back %q", v)
	}
	if v := readValue(t, db, "delivery/after"); v != "written under the new key" {
		t.Fatalf("with the new key alone, read back %q", v)
	}
	db.Close()
	if _, err := Open(dir, Options{EncryptionKey: keyOld}); err == nil || !strings.Contains(err.Error(), keyMismatch) {
		t.Fatalf("the old key after the re-key: %v", err)
	}
	if dirContains(t, dir, needle) {
		t.Fatal("the secret is readable from the data directory")
	}
}

// When no key given matches, Open says so and changes nothing: the store
// still opens with the key it was written with.
func TestOpenWithNoMatchingKeyLeavesTheStoreAsItWas(t *testing.T) {
	dir := t.TempDir()
	writeNeedle(t, dir, keyOld)
	_, err := Open(dir, Options{EncryptionKey: keyNew, PreviousKeys: [][]byte{keyOther}})
	if err == nil || !strings.Contains(err.Error(), keyMismatchAny) {
		t.Fatalf("open with no matching key: %v", err)
	}
	db := mustOpen(t, dir, Options{EncryptionKey: keyOld})
	defer db.Close()
	if v := readValue(t, db, "delivery/sub/x"); !strings.Contains(v, string(needle)) {
		t.Fatalf("read back %q", v)
	}
}

// The key registry of a database open elsewhere is never rewritten (badger
// would go on appending data keys sealed with the old key to the file it
// holds): Open fails on badger's lock, as without previous keys.
func TestReKeyLeavesALockedDirectoryAlone(t *testing.T) {
	dir := t.TempDir()
	writeNeedle(t, dir, keyOld)
	running := mustOpen(t, dir, Options{EncryptionKey: keyOld})
	_, err := Open(dir, Options{EncryptionKey: keyNew, PreviousKeys: [][]byte{keyOld}})
	if err == nil || !strings.Contains(err.Error(), "Cannot acquire directory lock") {
		t.Fatalf("re-key of an open database: %v", err)
	}
	if ok, err := sealedWith(dir, keyOld); !ok || err != nil {
		t.Fatalf("the registry of the open database was changed: %v %v", ok, err)
	}
	if err := running.Close(); err != nil {
		t.Fatal(err)
	}
}
