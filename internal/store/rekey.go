package store

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/dgraph-io/badger/v4"
	"go.uber.org/zap"
)

// keyMismatchAny is keyMismatch when earlier keys were given as well.
const keyMismatchAny = "neither the encryption_key nor any previous key matches the one the data was written with"

// sealedWith reports whether the key registry in dir opens with key; an
// error is anything but a wrong key (no registry, a short read).
func sealedWith(dir string, key []byte) (bool, error) {
	kr, err := badger.OpenKeyRegistry(badger.KeyRegistryOptions{Dir: dir, ReadOnly: true, EncryptionKey: key})
	if errors.Is(err, badger.ErrEncryptionKeyMismatch) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return true, kr.Close()
}

// sealingKey returns which of keys the registry in dir opens with: -1
// for none, and an error for anything but a wrong key.
func sealingKey(dir string, keys [][]byte) (int, error) {
	for i, k := range keys {
		ok, err := sealedWith(dir, k)
		if err != nil || ok {
			return i, err
		}
	}
	return -1, nil
}

// rekey moves a store written under one of previous to key. Badger
// encrypts the data with data keys of its own and keeps those in its key
// registry, sealed with the configured key, so re-sealing the registry is
// all a new key takes: nothing else is rewritten, and badger writes the
// new registry to a temporary file and renames it, so a crash leaves
// either the old one or the new one, both of which a next start opens.
// It holds badger's directory lock while it looks and writes, so that it
// never touches the registry of a database open elsewhere (badger.Open
// then reports the lock).
func rekey(dir string, key []byte, previous [][]byte, log *zap.Logger) error {
	if len(key) == 0 || len(previous) == 0 {
		return nil
	}
	if _, err := os.Stat(filepath.Join(dir, badger.KeyRegistryFileName)); err != nil {
		return nil // a new store: badger seals it with key
	}
	if ok, err := sealedWith(dir, key); ok || err != nil {
		return nil // nothing to do, or for badger.Open to report
	}
	unlock, err := lockDir(dir)
	if errors.Is(err, errDirLocked) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("re-keying the badger database in %s: %w; start once with the previous key as encryption_key, or re-key it offline with `badger rotate`", dir, err)
	}
	defer unlock()
	// Look again under the lock: another process may have re-keyed it.
	which, err := sealingKey(dir, append([][]byte{key}, previous...))
	switch {
	case err != nil || which == 0:
		return nil
	case which < 0:
		return fmt.Errorf("opening badger database in %s: %s", dir, keyMismatchAny)
	}
	kr, err := badger.OpenKeyRegistry(badger.KeyRegistryOptions{Dir: dir, ReadOnly: true, EncryptionKey: previous[which-1]})
	if err != nil {
		return fmt.Errorf("re-keying the badger database in %s: reading its key registry: %w", dir, err)
	}
	if err := badger.WriteKeyRegistry(kr, badger.KeyRegistryOptions{Dir: dir, EncryptionKey: key}); err != nil {
		return fmt.Errorf("re-keying the badger database in %s: %w", dir, err)
	}
	log.Info("re-keyed the store: its data keys are now sealed with the encryption_key, and the previous key can be taken out of the config",
		zap.String("dir", dir), zap.Int("previous_key", which))
	return nil
}
