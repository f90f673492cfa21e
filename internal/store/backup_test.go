package store

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/dgraph-io/badger/v4/pb"
	"google.golang.org/protobuf/proto"
)

// backupOf fills a store with n entries of 1 KB and three more (the
// needle, one that expires and one deleted) and returns its backup.
func backupOf(t *testing.T, n int) []byte {
	t.Helper()
	db := mustOpen(t, t.TempDir(), Options{EncryptionKey: keyOld})
	defer db.Close()
	for from := 0; from < n; from += 500 { // within badger's transaction limit
		err := db.Update(func(txn *badger.Txn) error {
			for i := from; i < min(from+500, n); i++ {
				if err := txn.Set(fmt.Appendf(nil, "delivery/q/%06d", i), bytes.Repeat([]byte{byte(i)}, 1000)); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	err := db.Update(func(txn *badger.Txn) error {
		if err := txn.SetEntry(badger.NewEntry([]byte("delivery/a/kept-a-while"), []byte("x")).WithTTL(time.Hour)); err != nil {
			return err
		}
		if err := txn.Set([]byte("delivery/q/deleted"), []byte("x")); err != nil {
			return err
		}
		return txn.Set([]byte("delivery/sub/x"), needle)
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(txn *badger.Txn) error { return txn.Delete([]byte("delivery/q/deleted")) }); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	at := time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)
	info, err := db.Backup(&buf, at)
	if err != nil || !info.At.Equal(at) || info.Version == 0 {
		t.Fatalf("backup: %+v %v", info, err)
	}
	return buf.Bytes()
}

func TestBackupRestoresIntoANewEncryptedStore(t *testing.T) {
	backup := backupOf(t, 2000)
	if n := records(t, backup); n < 3 {
		t.Fatalf("the backup has %d records: the test needs several", n)
	}
	dir := filepath.Join(t.TempDir(), "restored")
	info, err := Restore(dir, Options{EncryptionKey: keyNew}, bytes.NewReader(backup))
	if err != nil {
		t.Fatal(err)
	}
	if !info.Verified() || info.Entries != 2002 {
		t.Errorf("the restore gave %+v: want the checksum verified and 2002 entries", info)
	}
	if checked, err := VerifyBackup(bytes.NewReader(backup)); err != nil || checked != info {
		t.Errorf("verify: %+v, %v; want %+v", checked, err, info)
	}
	if want := time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC); !info.At.Equal(want) {
		t.Errorf("backup time %v, want %v", info.At, want)
	}
	if dirContains(t, dir, needle) {
		t.Error("the restored store is not encrypted")
	}
	db := mustOpen(t, dir, Options{EncryptionKey: keyNew})
	defer db.Close()
	if v := readValue(t, db, "delivery/sub/x"); v != string(needle) {
		t.Errorf("needle read back as %q", v)
	}
	if v := readValue(t, db, "delivery/q/001999"); v != string(bytes.Repeat([]byte{1999 % 256}, 1000)) {
		t.Errorf("the last queue entry read back as %q", v)
	}
	keys := 0
	err = db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			switch k := string(it.Item().Key()); {
			case k == backupEndKey, k == "delivery/q/deleted":
				t.Errorf("%s was restored", k)
			case k == "delivery/a/kept-a-while" && it.Item().ExpiresAt() == 0:
				t.Errorf("%s lost its expiry", k)
			}
			keys++
		}
		return nil
	})
	if err != nil || keys != 2002 {
		t.Fatalf("%d keys restored (%v), want 2002", keys, err)
	}
	// What is written next is newer than everything restored.
	if err := db.Update(func(txn *badger.Txn) error { return txn.Set([]byte("delivery/sub/x"), []byte("after")) }); err != nil {
		t.Fatal(err)
	}
	if v := readValue(t, db, "delivery/sub/x"); v != "after" {
		t.Errorf("a write after the restore read back as %q", v)
	}
}

// A backup cut short, at a record boundary or within one, or a file that
// is no backup, restores nothing and leaves the directory as it was.
func TestRestoreRefusesWhatIsNotAWholeBackup(t *testing.T) {
	backup := backupOf(t, 2000)
	endLen := lastRecordLen(t, backup)
	cases := map[string]struct {
		data []byte
		want string
	}{
		"cut before the end entry":  {backup[:len(backup)-endLen], "incomplete"},
		"cut within a record":       {backup[:len(backup)/2], "incomplete"},
		"cut within a size":         {backup[:3], "incomplete"},
		"empty":                     {nil, "incomplete"},
		"a text file":               {[]byte("storage_dir /var/lib/caddy/webhook\n"), "not a backup"},
		"a byte of a value changed": {changedValueByte(t, backup), "damaged"},
		"two backups joined":        {append(append([]byte{}, backup...), backup...), "damaged"},
		"a size after the end":      {binary.LittleEndian.AppendUint64(append([]byte{}, backup...), 5), "damaged"},
		"bytes after the end":       {append(append([]byte{}, backup...), 1, 2, 3), "damaged"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			if _, err := VerifyBackup(bytes.NewReader(c.data)); err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("verify: %v, want %q", err, c.want)
			}
			parent := t.TempDir()
			dir := filepath.Join(parent, "restored")
			if _, err := Restore(dir, Options{}, bytes.NewReader(c.data)); err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("restore: %v, want %q", err, c.want)
			}
			if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("the failed restore left %s (%v)", dir, err)
			}
			empty := t.TempDir()
			if _, err := Restore(empty, Options{}, bytes.NewReader(c.data)); err == nil {
				t.Fatal("restored into an existing directory")
			}
			if entries, _ := os.ReadDir(empty); len(entries) != 0 {
				t.Errorf("the failed restore left %d files in the directory that was empty", len(entries))
			}
		})
	}
}

// changedValueByte returns a copy of the backup with one byte changed in
// the middle of a queue entry's value: the records still decode, so only
// the checksum tells.
func changedValueByte(t *testing.T, backup []byte) []byte {
	t.Helper()
	b := append([]byte{}, backup...)
	i := bytes.Index(b, bytes.Repeat([]byte{7}, 1000))
	if i < 0 {
		t.Fatal("no value of 7s in the backup")
	}
	b[i+500] = 8
	return b
}

// A backup taken before backups carried a checksum still restores, and
// says it was not verified.
func TestRestoreTakesABackupWithoutChecksum(t *testing.T) {
	backup := backupOf(t, 100)
	endLen := lastRecordLen(t, backup)
	var end pb.KVList
	if err := proto.Unmarshal(backup[len(backup)-endLen+8:], &end); err != nil {
		t.Fatal(err)
	}
	var info map[string]any
	if err := json.Unmarshal(end.Kv[0].Value, &info); err != nil || info["sha256"] == nil {
		t.Fatalf("end entry %s (%v): want a sha256", end.Kv[0].Value, err)
	}
	delete(info, "sha256")
	end.Kv[0].Value, _ = json.Marshal(info)
	var old bytes.Buffer
	old.Write(backup[:len(backup)-endLen])
	if err := writeRecord(&old, &end); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "restored")
	restored, err := Restore(dir, Options{}, &old)
	if err != nil || restored.Verified() {
		t.Fatalf("restore: %+v, %v; want success, not verified", restored, err)
	}
	db := mustOpen(t, dir, Options{})
	defer db.Close()
	if v := readValue(t, db, "delivery/sub/x"); v != string(needle) {
		t.Errorf("needle read back as %q", v)
	}
}

// records counts the records of a backup.
func records(t *testing.T, b []byte) int {
	t.Helper()
	n := 0
	for off := 0; off < len(b); n++ {
		off += 8 + int(binary.LittleEndian.Uint64(b[off:]))
	}
	return n
}

// lastRecordLen is the length of the backup's last record (the end
// entry), size prefix included, found by walking the size prefixes.
func lastRecordLen(t *testing.T, b []byte) int {
	t.Helper()
	last := 0
	for off := 0; off < len(b); {
		last = off
		off += 8 + int(binary.LittleEndian.Uint64(b[off:]))
	}
	return len(b) - last
}

func TestRestoreRefusesADirectoryInUse(t *testing.T) {
	backup := backupOf(t, 10)
	dir := t.TempDir()
	writeNeedle(t, dir, nil)
	if _, err := Restore(dir, Options{}, bytes.NewReader(backup)); err == nil || !strings.Contains(err.Error(), "is not empty") {
		t.Fatalf("restore over a store: %v", err)
	}
	db := mustOpen(t, dir, Options{})
	defer db.Close()
	if v := readValue(t, db, "delivery/sub/x"); !strings.Contains(v, string(needle)) {
		t.Fatalf("the store under the refused restore: %q", v)
	}
}

// crafted is a backup of one record holding kvs, ended as Backup ends
// one, checksum included: only the entries themselves can be refused.
func crafted(t testing.TB, kvs ...*pb.KV) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := writeRecord(&b, &pb.KVList{Kv: kvs}); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(b.Bytes())
	end, _ := json.Marshal(BackupInfo{At: time.Unix(0, 0).UTC(), Version: 1, SHA256: hex.EncodeToString(sum[:])})
	if err := writeRecord(&b, &pb.KVList{Kv: []*pb.KV{{Key: []byte(backupEndKey), Value: end, Version: 1}}}); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// Entries that Backup never writes are refused, not handed to badger:
// its internal keys, or meta bits under which an inline value would be
// read as a pointer into the value log.
func TestRestoreRefusesEntriesBackupNeverWrites(t *testing.T) {
	good := func() *pb.KV { return &pb.KV{Key: []byte("delivery/sub/x"), Value: []byte("v"), Version: 3} }
	t.Run("a well-formed entry", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "restored")
		if _, err := Restore(dir, Options{}, bytes.NewReader(crafted(t, good()))); err != nil {
			t.Fatal(err)
		}
		db := mustOpen(t, dir, Options{})
		defer db.Close()
		if v := readValue(t, db, "delivery/sub/x"); v != "v" {
			t.Errorf("read back %q", v)
		}
	})
	bad := map[string]func(kv *pb.KV) []*pb.KV{
		"badger's internal key": func(kv *pb.KV) []*pb.KV { kv.Key = []byte("!badger!head"); return []*pb.KV{kv} },
		"a value pointer bit":   func(kv *pb.KV) []*pb.KV { kv.Meta = []byte{1 << 1}; return []*pb.KV{kv} },
		"an empty key":          func(kv *pb.KV) []*pb.KV { kv.Key = nil; return []*pb.KV{kv} },
		"a key over badger's limit": func(kv *pb.KV) []*pb.KV {
			kv.Key = bytes.Repeat([]byte("k"), maxKeySize+1)
			return []*pb.KV{kv}
		},
		"version 0": func(kv *pb.KV) []*pb.KV { kv.Version = 0; return []*pb.KV{kv} },
		"an end entry among others": func(kv *pb.KV) []*pb.KV {
			return []*pb.KV{kv, {Key: []byte(backupEndKey), Value: []byte("{}"), Version: 1}}
		},
	}
	for name, change := range bad {
		t.Run(name, func(t *testing.T) {
			if _, err := VerifyBackup(bytes.NewReader(crafted(t, change(good())...))); err == nil || !strings.Contains(err.Error(), "not a backup") {
				t.Errorf("verify: %v, want not a backup", err)
			}
			dir := filepath.Join(t.TempDir(), "restored")
			_, err := Restore(dir, Options{}, bytes.NewReader(crafted(t, change(good())...)))
			if err == nil || !strings.Contains(err.Error(), "not a backup") {
				t.Fatalf("restore: %v, want not a backup", err)
			}
			if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("the failed restore left %s (%v)", dir, err)
			}
		})
	}
}

// Whatever the file holds, the restore answers with an error or a store
// that opens; it never panics.
func FuzzRestore(f *testing.F) {
	f.Add(crafted(f, &pb.KV{Key: []byte("delivery/sub/x"), Value: []byte("v"), Version: 3}))
	f.Add(crafted(f, &pb.KV{Key: []byte("ingest/w/a"), Value: []byte("{}"), Version: 1, ExpiresAt: 1}))
	f.Add([]byte("storage_dir /var/lib/caddy/webhook\n"))
	f.Fuzz(func(t *testing.T, backup []byte) {
		dir := filepath.Join(t.TempDir(), "restored")
		if _, err := Restore(dir, Options{}, bytes.NewReader(backup)); err != nil {
			return
		}
		db, err := Open(dir, Options{})
		if err != nil {
			t.Fatalf("a restored store does not open: %v", err)
		}
		err = db.View(func(txn *badger.Txn) error {
			it := txn.NewIterator(badger.DefaultIteratorOptions)
			defer it.Close()
			for it.Rewind(); it.Valid(); it.Next() {
				if _, err := it.Item().ValueCopy(nil); err != nil {
					return err
				}
			}
			return nil
		})
		if cerr := db.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			t.Fatalf("reading the restored store: %v", err)
		}
	})
}
