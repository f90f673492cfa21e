package store

import (
	"bytes"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/dgraph-io/badger/v4/options"
)

// reclaimTestDB is a badger database whose writes reach the bottom level
// on demand (settle), as compactions would move them there in time.
// Tables are as small as the store's.
type reclaimTestDB struct {
	t   *testing.T
	dir string
	*badger.DB
}

func openReclaimTestDB(t *testing.T) *reclaimTestDB {
	r := &reclaimTestDB{t: t, dir: t.TempDir()}
	r.open()
	t.Cleanup(func() { r.Close() })
	return r
}

func (r *reclaimTestDB) open() {
	db, err := badger.Open(badger.DefaultOptions(r.dir).WithLogger(nil).
		WithBaseTableSize(1 << 20).WithMemTableSize(8 << 20).WithCompactL0OnClose(true).WithCompression(options.None))
	if err != nil {
		r.t.Fatal(err)
	}
	r.DB = db
}

// settle moves every write to the bottom level: closing flushes the
// memtables and compacts level 0, flattening moves the rest down.
func (r *reclaimTestDB) settle() {
	if err := r.Close(); err != nil {
		r.t.Fatal(err)
	}
	r.open()
	if err := r.Flatten(1); err != nil {
		r.t.Fatal(err)
	}
	for _, l := range r.Levels()[:len(r.Levels())-1] {
		if l.NumTables > 0 {
			r.t.Fatalf("settled, yet level %d holds %d tables", l.Level, l.NumTables)
		}
	}
}

// write stores n records of 400 bytes under prefix, expiring after ttl
// unless it is 0.
func (r *reclaimTestDB) write(prefix string, n int, ttl time.Duration) {
	value := bytes.Repeat([]byte{'v'}, 400)
	for i := 0; i < n; i += 500 {
		err := Update(r.DB, func(txn *badger.Txn) error {
			for j := i; j < min(i+500, n); j++ {
				e := badger.NewEntry(fmt.Appendf(nil, "%s%08d", prefix, j), value)
				if ttl > 0 {
					e = e.WithTTL(ttl)
				}
				if err := txn.SetEntry(e); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			r.t.Fatal(err)
		}
	}
}

// bottom returns the size and number of the bottom level's tables.
func (r *reclaimTestDB) bottom() (size int64, tables int) {
	for _, ti := range r.Tables() {
		if ti.Level == r.Opts().MaxLevels-1 {
			size += int64(ti.OnDiskSize)
			tables++
		}
	}
	return size, tables
}

func (r *reclaimTestDB) count(prefix string) int {
	n := 0
	err := r.View(func(txn *badger.Txn) error {
		opt := badger.DefaultIteratorOptions
		opt.Prefix, opt.PrefetchValues = []byte(prefix), false
		it := txn.NewIterator(opt)
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			n++
		}
		return nil
	})
	if err != nil {
		r.t.Fatal(err)
	}
	return n
}

// Records that expire after reaching the bottom level, with newer keys
// written after them in the key space, as delivery records are: without
// the reclaimer their tables are never rewritten.
func TestReclaimRewritesExpiredBottomTables(t *testing.T) {
	db := openReclaimTestDB(t)
	const n = 20000 // about 8 MB under each prefix
	// Long enough to reach the bottom level alive, even under -race.
	const ttl = 4 * time.Second
	expired := time.Now().Add(ttl + time.Second) // badger expires by the second
	db.write("a/", n, ttl)
	db.write("d/", n/2, 0) // deleted below
	db.settle()
	err := db.Update(func(txn *badger.Txn) error {
		for j := 0; j < n/2; j++ {
			if err := txn.Delete(fmt.Appendf(nil, "d/%08d", j)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Until(expired))
	db.write("z/", n, 0)
	db.settle()
	before, tables := db.bottom()
	if got := db.count("a/"); got != 0 {
		t.Fatalf("%d of the expired records still read", got)
	}
	if before < 2*n*400 {
		t.Fatalf("the bottom level holds %d bytes: the records expired before they reached it", before)
	}

	marked, err := newReclaimer().reclaim(db.DB, time.Now(), nil)
	if err != nil {
		t.Fatal(err)
	}
	db.settle()
	after, _ := db.bottom()
	t.Logf("bottom level: %d tables, %d KB; %d marked; then %d KB", tables, before>>10, marked, after>>10)
	if marked == 0 {
		t.Fatal("no table marked")
	}
	for _, ti := range db.Tables() {
		if bytes.HasPrefix(ti.Left, []byte("a/")) {
			t.Errorf("table %d of expired records is still on level %d", ti.ID, ti.Level)
		}
	}
	if freed := before - after; freed < n*400*9/10 {
		t.Errorf("the bottom level went from %d to %d bytes: %d bytes of records expired in it", before, after, n*400)
	}
	if got := db.count("z/"); got != n {
		t.Errorf("%d of the %d live records read after reclaiming", got, n)
	}
	if got := db.count("d/"); got != 0 {
		t.Errorf("%d deleted records came back", got)
	}
}

// reclaimNothing runs a reclaimer over db's live tables: it must read
// some and mark none.
func reclaimNothing(t *testing.T, db *reclaimTestDB) (*reclaimer, time.Time) {
	t.Helper()
	r := newReclaimer()
	now := time.Now()
	if marked, err := r.reclaim(db.DB, now, nil); err != nil || marked != 0 {
		t.Fatalf("reclaim of live tables: %d marked, %v", marked, err)
	}
	if len(r.recheck) == 0 {
		t.Fatal("no table read")
	}
	return r, now
}

// A table is read when it appears, and again only once its entries'
// expiry can have made it mostly dead.
func TestReclaimRereadsATableWhenItCanBeMostlyDead(t *testing.T) {
	db := openReclaimTestDB(t)
	db.write("a/", 5000, time.Hour)
	db.settle()
	r, now := reclaimNothing(t, db)
	for id, at := range r.recheck {
		if at.Before(now.Add(59*time.Minute)) || at.After(now.Add(61*time.Minute)) {
			t.Errorf("table %d is read again at %v, not in an hour", id, at)
		}
	}
	if due := r.due(db.DB, now.Add(30*time.Minute)); len(due) != 0 {
		t.Errorf("%d tables read again before their entries expire", len(due))
	}
	if due := r.due(db.DB, now.Add(2*time.Hour)); len(due) != len(r.recheck) {
		t.Errorf("%d of %d tables due once their entries have expired", len(due), len(r.recheck))
	}

	db.write("b/", 5000, 0) // never expires
	db.settle()
	if _, err := r.reclaim(db.DB, now, nil); err != nil {
		t.Fatal(err)
	}
	for _, ti := range r.due(db.DB, now.Add(100*365*24*time.Hour)) {
		if bytes.HasPrefix(ti.Left, []byte("b/")) {
			t.Errorf("table %d of records without expiry is read again", ti.ID)
		}
	}
}

// A key is deleted only while it reads as missing.
func TestDeleteIfDead(t *testing.T) {
	db := openReclaimTestDB(t)
	key := []byte("k")
	if err := db.Update(func(txn *badger.Txn) error {
		return txn.SetEntry(badger.NewEntry(key, []byte("v")).WithTTL(time.Second))
	}); err != nil {
		t.Fatal(err)
	}
	if ok, err := deleteIfDead(db.DB, key); ok || err != nil {
		t.Fatalf("a live key: deleted %v, %v", ok, err)
	}
	time.Sleep(2100 * time.Millisecond)
	if ok, err := deleteIfDead(db.DB, key); !ok || err != nil {
		t.Fatalf("an expired key: deleted %v, %v", ok, err)
	}
	if err := db.Update(func(txn *badger.Txn) error { return txn.Set(key, []byte("again")) }); err != nil {
		t.Fatal(err)
	}
	if ok, err := deleteIfDead(db.DB, key); ok || err != nil {
		t.Fatalf("a key set again: deleted %v, %v", ok, err)
	}
	err := db.View(func(txn *badger.Txn) error {
		_, err := txn.Get(key)
		return err
	})
	if errors.Is(err, badger.ErrKeyNotFound) {
		t.Fatal("the key set again was deleted")
	}
}

// A record written again (a delivery settled, say) leaves its older
// version in the bottom table until a compaction merges the two: that
// version is counted dead, so the table is read again once the new
// versions expire.
func TestReclaimCountsOverwrittenVersionsDead(t *testing.T) {
	db := openReclaimTestDB(t)
	db.write("a/", 5000, 0)
	db.settle()
	db.write("a/", 5000, time.Hour) // stays above the bottom level
	r, now := reclaimNothing(t, db)
	for id, at := range r.recheck {
		if at.After(now.Add(61 * time.Minute)) {
			t.Errorf("table %d is read again at %v, not once the new versions expire", id, at)
		}
	}
}
