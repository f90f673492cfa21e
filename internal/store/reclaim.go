package store

import (
	"bytes"
	"cmp"
	"errors"
	"math"
	"slices"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/dgraph-io/badger/v4/y"
)

// Badger drops expired and deleted entries only when a compaction
// rewrites the table that holds them, and it rewrites a table of the
// bottom level only when data from the level above lands in its key
// range. Our keys grow with time (delivery IDs, attempt times), so new
// data lands at the end of the key space and the bottom level's older
// tables are never rewritten: a record kept for `retention` expired there
// and stayed on the disk for good, and the store grew with every
// delivery ever made rather than with those of the last `retention`
// (badger#2329; its own bottom-level compaction only counts entries
// already dead when a table was written, and only from 10 MB of them).
//
// A reclaimer finds the bottom-level tables whose data is mostly dead
// and writes a tombstone over one dead key of each. The compaction that
// carries that tombstone down has to include the table, and rewrites it
// without its dead entries. Tables are immutable, so each is read once
// when it appears and again only once enough of its entries will have
// expired.

// reclaimer remembers what it learnt about the bottom level's tables.
type reclaimer struct {
	// recheck holds, per table, when it is next worth reading: when
	// enough of its live entries will have expired to make most of it
	// dead (the zero time: at once).
	recheck map[uint64]time.Time
}

func newReclaimer() *reclaimer { return &reclaimer{recheck: map[uint64]time.Time{}} }

// never is a recheck time for a table that cannot become mostly dead by
// expiry alone.
var never = time.Unix(math.MaxInt64/2, 0)

// reclaim marks the tables of db's bottom level that are mostly dead; it
// returns how many it marked. stop ends it early.
func (r *reclaimer) reclaim(db *badger.DB, now time.Time, stop <-chan struct{}) (marked int, err error) {
	bottom := r.due(db, now)
	type victim struct {
		table uint64
		key   []byte
	}
	var victims []victim
	err = db.View(func(txn *badger.Txn) error {
		opt := badger.DefaultIteratorOptions
		opt.PrefetchValues, opt.AllVersions = false, true
		it := txn.NewIterator(opt)
		defer it.Close()
		for _, t := range bottom {
			select {
			case <-stop:
				return nil
			default:
			}
			s := survey(it, y.ParseKey(t.Left), y.ParseKey(t.Right))
			if s.victim != nil {
				victims = append(victims, victim{t.ID, s.victim})
			}
			r.recheck[t.ID] = s.mostlyDeadAt
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	for _, v := range victims {
		select {
		case <-stop:
			return marked, nil
		default:
		}
		ok, err := deleteIfDead(db, v.key)
		if err != nil {
			return marked, err
		}
		if ok {
			marked++
		} else {
			// Alive again: the rest of the table may still be dead.
			r.recheck[v.table] = time.Time{}
		}
	}
	return marked, nil
}

// due returns the bottom-level tables worth reading now, and forgets the
// tables that have left the level.
func (r *reclaimer) due(db *badger.DB, now time.Time) []badger.TableInfo {
	bottomLevel := db.Opts().MaxLevels - 1
	var due []badger.TableInfo
	present := make(map[uint64]bool, len(r.recheck))
	for _, t := range db.Tables() {
		if t.Level != bottomLevel {
			continue
		}
		present[t.ID] = true
		if !r.recheck[t.ID].After(now) {
			due = append(due, t)
		}
	}
	for id := range r.recheck {
		if !present[id] {
			delete(r.recheck, id)
		}
	}
	return due
}

// tableSurvey is what reading one table's key range found.
type tableSurvey struct {
	// victim is a dead key of a table that is mostly dead, else nil.
	victim []byte
	// mostlyDeadAt is when expiries will have made it mostly dead:
	// never, if they cannot or if it is already (its tombstone will
	// have it rewritten).
	mostlyDeadAt time.Time
}

// expiring is a live entry that expires.
type expiring struct {
	at   uint64 // Unix seconds
	size int64
}

// survey reads every version of the keys in [left, right]: those of the
// table and any newer ones from above it, which a compaction would merge
// into it. A key whose newest version is deleted or expired is dead,
// with all its versions; the older versions of a live key are dead too
// (a compaction keeps one).
func survey(it *badger.Iterator, left, right []byte) tableSurvey {
	var dead, total int64
	var victim, key []byte
	var expiries []expiring
	keyDead := false
	for it.Seek(left); it.Valid(); it.Next() {
		item := it.Item()
		k := item.Key()
		if bytes.Compare(k, right) > 0 {
			break
		}
		size := item.EstimatedSize()
		total += size
		newest := !bytes.Equal(k, key)
		if newest {
			key = item.KeyCopy(key[:0])
			keyDead = item.IsDeletedOrExpired()
			if keyDead && victim == nil {
				victim = item.KeyCopy(nil)
			}
		}
		switch {
		case keyDead || !newest:
			dead += size
		case item.ExpiresAt() > 0:
			expiries = append(expiries, expiring{item.ExpiresAt(), size})
		}
	}
	if dead*2 > total && victim != nil {
		return tableSurvey{victim: victim, mostlyDeadAt: never}
	}
	slices.SortFunc(expiries, func(a, b expiring) int { return cmp.Compare(a.at, b.at) })
	for _, e := range expiries {
		if dead += e.size; dead*2 > total {
			// Badger counts an entry expired once its second has passed.
			return tableSurvey{mostlyDeadAt: time.Unix(int64(e.at)+1, 0)}
		}
	}
	return tableSurvey{mostlyDeadAt: never}
}

// deleteIfDead writes a tombstone over key unless it has come alive
// again since it was read: a key deleted or expired reads as missing
// either way, and a write that lands meanwhile makes the transaction
// conflict, retried to find the key alive.
func deleteIfDead(db *badger.DB, key []byte) (bool, error) {
	deleted := false
	err := Update(db, func(txn *badger.Txn) error {
		deleted = false
		_, err := txn.Get(key)
		switch {
		case err == nil:
			return nil
		case !errors.Is(err, badger.ErrKeyNotFound):
			return err
		}
		deleted = true
		return txn.Delete(key)
	})
	return deleted, err
}
