package store

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/dgraph-io/badger/v4/pb"
	"google.golang.org/protobuf/proto"
)

// backupEndKey is the last entry of every complete backup. Badger's
// format is a series of length-prefixed records with nothing at the end,
// so a copy cut short between two records would otherwise restore as if
// it were whole, without what came after the cut.
const backupEndKey = "backup/end"

// BackupInfo is the value of the end entry.
type BackupInfo struct {
	// At is when the backup was taken.
	At time.Time `json:"at"`
	// Version is the last badger version in it.
	Version uint64 `json:"version"`
	// SHA256 is the hex SHA-256 of every byte of the backup before its
	// last record (the one holding this entry). Backups taken before it
	// was added have none.
	SHA256 string `json:"sha256,omitempty"`
	// Entries is how many entries the backup holds, before its end
	// entry.
	Entries int `json:"entries"`
}

// Verified reports whether a restore checked the backup's checksum: it
// is false only for a backup older than the checksum.
func (i BackupInfo) Verified() bool { return i.SHA256 != "" }

// Backup writes a consistent copy of every live entry to w (one snapshot,
// while writes go on) in badger's backup format (what badger's Load and
// `badger restore` read), then an end entry that Restore requires, with
// the checksum of what came before it. The copy is not encrypted, even
// when the store is.
//
// It reads the snapshot with one iterator rather than badger's own
// Backup: that one streams with 8 goroutines, each filling 32 MB
// buffers, queues up to 32 of them for a slow reader, and copies every
// version and deletion. For a million 600-byte entries it took 1.5 GB of
// heap on top of the store's (380 MB with 2 goroutines); this loop holds
// one record of up to backupRecordSize.
func (db *DB) Backup(w io.Writer, now time.Time) (BackupInfo, error) {
	info := BackupInfo{At: now.UTC()}
	sum := sha256.New()
	body := io.MultiWriter(w, sum)
	var list pb.KVList
	size := 0
	flush := func() error {
		if len(list.Kv) == 0 {
			return nil
		}
		err := writeRecord(body, &list)
		list.Kv, size = list.Kv[:0], 0
		return err
	}
	err := db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.DefaultIteratorOptions)
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			item := it.Item()
			value, err := item.ValueCopy(nil)
			if err != nil {
				return err
			}
			list.Kv = append(list.Kv, &pb.KV{
				Key: item.KeyCopy(nil), Value: value, UserMeta: []byte{item.UserMeta()},
				Version: item.Version(), ExpiresAt: item.ExpiresAt(),
			})
			info.Version = max(info.Version, item.Version())
			info.Entries++
			if size += len(value) + int(item.KeySize()); size >= backupRecordSize {
				if err := flush(); err != nil {
					return err
				}
			}
		}
		return flush()
	})
	if err != nil {
		return BackupInfo{}, err
	}
	info.SHA256 = hex.EncodeToString(sum.Sum(nil))
	value, err := json.Marshal(info)
	if err != nil {
		return BackupInfo{}, err
	}
	end := &pb.KVList{Kv: []*pb.KV{{Key: []byte(backupEndKey), Value: value, Version: max(info.Version, 1)}}}
	return info, writeRecord(w, end)
}

// backupRecordSize is about how much of the store one record of a backup
// holds.
const backupRecordSize = 1 << 20

// writeRecord writes one record of badger's backup format: the size of
// the encoded list, then the list.
func writeRecord(w io.Writer, list *pb.KVList) error {
	b, err := proto.Marshal(list)
	if err != nil {
		return err
	}
	if err := binary.Write(w, binary.LittleEndian, uint64(len(b))); err != nil {
		return err
	}
	_, err = w.Write(b)
	return err
}

// ErrIncompleteBackup: the backup lacks its end entry.
var ErrIncompleteBackup = errors.New("the backup is incomplete (it ends before its end entry): it was cut short while it was taken or copied")

// ErrDamagedBackup: the backup does not match its checksum.
var ErrDamagedBackup = errors.New("the backup is damaged: its contents do not match the checksum taken with it (changed on disk or in a copy, or two files joined)")

// Restore creates a database in dir, which must be empty or not exist,
// from a backup written by Backup, with opts (an encryption key encrypts
// the restored database). On any error it removes what it created, so
// dir is as it was.
func Restore(dir string, opts Options, r io.Reader) (BackupInfo, error) {
	existed, err := emptyDir(dir)
	if err != nil {
		return BackupInfo{}, err
	}
	info, err := restoreInto(dir, opts, r)
	if err != nil {
		if existed {
			clearDir(dir)
		} else {
			os.RemoveAll(dir)
		}
		return BackupInfo{}, err
	}
	return info, nil
}

// emptyDir checks that dir is empty or missing, and reports whether it
// exists.
func emptyDir(dir string) (exists bool, err error) {
	entries, err := os.ReadDir(dir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return false, nil
	case err != nil:
		return false, err
	case len(entries) > 0:
		return true, fmt.Errorf("%s is not empty: restore into a new directory, and point storage_dir at it", dir)
	}
	return true, nil
}

func clearDir(dir string) {
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		os.RemoveAll(filepath.Join(dir, e.Name()))
	}
}

func restoreInto(dir string, opts Options, r io.Reader) (info BackupInfo, err error) {
	db, err := Open(dir, opts)
	if err != nil {
		return info, err
	}
	defer func() {
		if cerr := db.Close(); err == nil && cerr != nil {
			err = cerr
		}
	}()
	return load(db, r)
}

// restorePendingWrites is how many batches (of up to badger's 1.2 MB
// transaction limit, with our memtables) the restore hands to badger's
// writer before waiting for the first. The restore of a million 600-byte
// entries took 21 s with 256 (what badger's own Load is usually given)
// and with 4, but 256 kept some 700 MB of heap live (1.4 GB resident):
// `caddy webhooks-restore` was OOM-killed in a 300 MB container where
// Caddy itself runs that store.
const restorePendingWrites = 4

// maxBackupRecord bounds one record of a backup. Badger's streams write
// batches of up to about 100 MB (a soft limit, and an entry is at most
// our 1.2 MB transaction limit); the bound keeps a file that is no
// backup at all from making the restore allocate whatever its first
// eight bytes say.
const maxBackupRecord = 256 << 20

// errNotABackup: a record's size is out of bounds, a record does not
// decode, or an entry is one Backup never writes.
var errNotABackup = errors.New("this is not a backup taken from the webhooks admin API")

// load writes the entries of a backup into db, as badger's Load does,
// but checks each entry first and keeps the end entry out of the store.
// Load would write whatever the file says: badger's internal keys, or
// meta bits that make an inline value read as a pointer into the value
// log.
func load(db *DB, r io.Reader) (info BackupInfo, err error) {
	loader := db.NewKVLoader(restorePendingWrites)
	defer func() {
		// Badger's writer still holds the batches sent: wait for them
		// before the database closes, whatever happened.
		if ferr := loader.Finish(); err == nil && ferr != nil {
			err = ferr
		}
	}()
	return readBackup(r, loader.Set)
}

// VerifyBackup reads a backup through as Restore does, restoring
// nothing: it returns what Restore would refuse it for, or its info.
func VerifyBackup(r io.Reader) (BackupInfo, error) {
	return readBackup(r, func(*pb.KV) error { return nil })
}

// readBackup hands each entry of a backup to use, once checked, and
// returns the info of its end entry once the checksum it holds matches.
func readBackup(r io.Reader, use func(*pb.KV) error) (info BackupInfo, err error) {
	in := bufio.NewReaderSize(r, 1<<20)
	sum := sha256.New()
	entries, ended := 0, false
	var body []byte
	for {
		before := sum.Sum(nil)
		body, err = readRecord(in, body, sum)
		switch {
		case err == io.EOF && ended:
			info.Entries = entries
			return info, nil
		case err == io.EOF:
			return info, ErrIncompleteBackup
		case ended: // two backups joined, or bytes added to one
			return info, ErrDamagedBackup
		case err != nil:
			return info, err
		}
		var list pb.KVList
		if err := proto.Unmarshal(body, &list); err != nil {
			return info, fmt.Errorf("%w (a record does not decode: %v)", errNotABackup, err)
		}
		if info, ended, err = endOf(&list, before); err != nil || ended {
			if err != nil {
				return info, err
			}
			continue
		}
		for _, kv := range list.Kv {
			if err := checkEntry(kv); err != nil {
				return info, err
			}
			if err := use(kv); err != nil {
				return info, err
			}
			entries++
		}
	}
}

// readRecord reads the next record of a backup into buf (grown as
// needed) and adds it to sum. It returns io.EOF only between records.
func readRecord(in io.Reader, buf []byte, sum io.Writer) ([]byte, error) {
	var sizeBuf [8]byte
	if _, err := io.ReadFull(in, sizeBuf[:]); err != nil {
		return buf, readError(err)
	}
	size := binary.LittleEndian.Uint64(sizeBuf[:])
	if size > maxBackupRecord {
		return buf, fmt.Errorf("%w (a record's size is out of bounds)", errNotABackup)
	}
	buf = slices.Grow(buf[:0], int(size))[:size]
	if _, err := io.ReadFull(in, buf); err != nil {
		if err == io.EOF { // a size with nothing after it
			err = io.ErrUnexpectedEOF
		}
		return buf, readError(err)
	}
	sum.Write(sizeBuf[:])
	sum.Write(buf)
	return buf, nil
}

// readError names what a read error of the backup means; io.EOF (the
// end of the file between records) passes.
func readError(err error) error {
	switch {
	case err == io.EOF:
		return err
	case errors.Is(err, io.ErrUnexpectedEOF):
		return ErrIncompleteBackup
	}
	return fmt.Errorf("reading the backup: %w", err)
}

// endOf reports whether list is the end record and, if it is, reads its
// info and checks the checksum of what came before it (sumBefore).
func endOf(list *pb.KVList, sumBefore []byte) (info BackupInfo, end bool, err error) {
	if len(list.Kv) != 1 || string(list.Kv[0].Key) != backupEndKey {
		return info, false, nil
	}
	if err := json.Unmarshal(list.Kv[0].Value, &info); err != nil {
		return info, true, fmt.Errorf("reading the backup's end entry: %w", err)
	}
	if info.Verified() && info.SHA256 != hex.EncodeToString(sumBefore) {
		return info, true, ErrDamagedBackup
	}
	return info, true, nil
}

// checkEntry refuses what Backup never writes.
func checkEntry(kv *pb.KV) error {
	switch {
	case len(kv.Key) == 0 || len(kv.Key) > maxKeySize:
		return fmt.Errorf("%w (a key of %d bytes)", errNotABackup, len(kv.Key))
	case bytes.HasPrefix(kv.Key, []byte("!badger!")):
		return fmt.Errorf("%w (badger's internal key %q)", errNotABackup, kv.Key)
	case string(kv.Key) == backupEndKey:
		return fmt.Errorf("%w (an end entry among others)", errNotABackup)
	case len(kv.Meta) > 0 && kv.Meta[0] != 0:
		return fmt.Errorf("%w (an entry with badger's meta bits %#x)", errNotABackup, kv.Meta[0])
	case kv.Version == 0 || kv.Version > math.MaxUint64/2:
		return fmt.Errorf("%w (version %d)", errNotABackup, kv.Version)
	}
	return nil
}

// maxKeySize is badger's limit on a key.
const maxKeySize = 65000
