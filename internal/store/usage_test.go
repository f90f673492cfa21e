package store

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/dgraph-io/badger/v4"
)

func apparentSize(t *testing.T, dir string) int64 {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var total int64
	for _, e := range entries {
		info, err := e.Info()
		if err != nil {
			t.Fatal(err)
		}
		total += info.Size()
	}
	return total
}

func TestDiskUse(t *testing.T) {
	dir := t.TempDir()
	db := mustOpen(t, dir, Options{})
	defer db.Close()

	empty, apparent := db.DiskUse(), apparentSize(t, dir)
	t.Logf("empty store: %d bytes used, %d apparent", empty, apparent)
	if empty <= 0 {
		t.Fatalf("an open store uses %d bytes", empty)
	}
	if runtime.GOOS == "linux" && empty*2 > apparent {
		// Badger's logs are sparse when created: their sizes are not
		// what the disk holds.
		t.Errorf("empty store: %d bytes used, %d apparent: sparse files counted at their size?", empty, apparent)
	}

	const n, size = 1000, 4 << 10
	value := bytes.Repeat([]byte{'v'}, size)
	for i := 0; i < n; i += 100 {
		if err := db.Update(func(txn *badger.Txn) error {
			for j := i; j < i+100; j++ {
				if err := txn.Set(fmt.Appendf(nil, "k%05d", j), value); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	if grown := db.DiskUse() - empty; grown < n*size {
		t.Errorf("writing %d bytes grew the store by %d", n*size, grown)
	}
	if got, want := DiskUse(filepath.Join(dir, "missing")), int64(0); got != want {
		t.Errorf("a missing directory uses %d bytes", got)
	}
}
