// Package store opens and maintains the embedded badger database that the
// webhooks app shares between the inbound and outbound halves of the plugin.
//
// It knows nothing about Caddy: the adapter hands it a directory and a zap
// logger. Each domain package (ingest, delivery) keeps its keys under its own
// prefix and reaches the database only through its own small interface.
package store

import (
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/dgraph-io/badger/v4/options"
	"go.uber.org/zap"
)

// Options tune how the database is opened.
type Options struct {
	// Logger receives the free-space guard's lines, and badger's warnings
	// and errors under the name "badger". Nil discards them.
	Logger *zap.Logger
	// EncryptionKey, when set, turns on badger's encryption at rest.
	// It must be 16, 24 or 32 bytes long (AES-128/192/256).
	EncryptionKey []byte
	// PreviousKeys are keys the database may have been encrypted with
	// before EncryptionKey. Open moves a database written under one of
	// them to EncryptionKey (see rekey).
	PreviousKeys [][]byte
	// GCInterval is how often the store's upkeep runs (reclaiming the
	// space of expired and deleted entries, value-log garbage
	// collection); 0 means 5m.
	GCInterval time.Duration
	// CloseTimeout bounds how long Close waits for badger; 0 means 30s.
	CloseTimeout time.Duration
	// MinFreeSpace is the free space on the database's filesystem below
	// which Writable refuses (see LowSpaceError); 0 or less: no minimum.
	MinFreeSpace int64
	// FreeSpace reads the free space of a directory's filesystem; nil
	// means the operating system's. Tests replace it.
	FreeSpace func(dir string) (int64, error)
	// SyncWrites makes every commit wait until badger's write-ahead log
	// is on the disk (msync), not only in the page cache, so that what
	// was acknowledged survives a power cut or a kernel crash too.
	SyncWrites bool
}

// DB is an open badger database plus its background upkeep.
type DB struct {
	*badger.DB
	log          *zap.Logger
	dir          string
	closeTimeout time.Duration
	space        *spaceGuard
	stop         chan struct{}
	done         chan struct{}
	spaceDone    chan struct{}
	closeErr     error
	once         sync.Once
}

// ParseEncryptionKey reads a key given as base64 of 16, 24 or 32 bytes.
// Errors never quote the key, nor name the option: callers do.
func ParseEncryptionKey(s string) ([]byte, error) {
	key, err := base64.StdEncoding.DecodeString(strings.TrimSpace(s))
	if err != nil {
		return nil, errors.New("must be base64 (e.g. the output of `openssl rand -base64 32`)")
	}
	switch len(key) {
	case 16, 24, 32:
		return key, nil
	}
	return nil, fmt.Errorf("must decode to 16, 24 or 32 bytes, not %d", len(key))
}

const keyMismatch = "the encryption_key does not match the one the data was written with"

// CheckDir reports, without opening the database, what Open(dir) with key
// and previous would refuse: a dir that is not a directory, or a database
// in it written with another key than key or one of previous (or none).
// Badger's key registry, a small file that starts with a sanity text
// sealed with the key, tells; it can be read while another process has
// the database open, so `caddy validate` can check a config against the
// directory a running Caddy uses. A directory that does not exist yet
// passes: Open creates it.
func CheckDir(dir string, key []byte, previous [][]byte) error {
	fi, err := os.Stat(dir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil
	case err != nil:
		return err
	case !fi.IsDir():
		return fmt.Errorf("%s is not a directory", dir)
	}
	which, err := sealingKey(dir, append([][]byte{key}, previous...))
	if err != nil {
		// Left to Open to report: a running database appends a data key
		// to the registry when it rotates keys, and a read that meets the
		// append half done fails without anything being wrong.
		return nil
	}
	if which < 0 {
		return fmt.Errorf("badger database in %s: %s", dir, mismatch(previous))
	}
	return nil
}

// mismatch says that no key given opens the database.
func mismatch(previous [][]byte) string {
	if len(previous) > 0 {
		return keyMismatchAny
	}
	return keyMismatch
}

// Open opens (creating if needed) the database in dir.
func Open(dir string, opts Options) (*DB, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("creating storage directory: %w", err)
	}
	bopts := badger.DefaultOptions(dir).
		// Not WithLoggingLevel: it replaces the logger with badger's own,
		// which writes to stderr past Caddy's log. badgerLogger does the
		// levels instead.
		WithLogger(badgerLogger{logger(opts.Logger).Named("badger")}).
		// The defaults are sized for a dedicated database server; inside a
		// web server they would hold ~400 MB of caches before any traffic.
		// Two 8 MB memtables and a 16 MB block cache took the peak memory
		// of queueing a million deliveries from 894 to 562 MB without
		// slowing it (bench/scale). A transaction may then hold 1.2 MB,
		// still more than the largest publish (1 MB).
		WithMemTableSize(8 << 20).
		WithNumMemtables(2).
		WithBlockCacheSize(16 << 20).
		WithIndexCacheSize(16 << 20).
		WithValueLogFileSize(128 << 20).
		WithNumCompactors(2).
		// A compaction builds up to 8+splits tables at once, in memory,
		// and badger's tables grow 2× per level: with a million queued
		// deliveries that was over a GB. 1 MB tables at every level
		// bound it.
		WithBaseTableSize(1 << 20).
		// Snappy-compressed tables kept compaction's builders and the
		// block cache busy on the heap: with a million queued deliveries
		// uncompressed ones took the peak anonymous memory from 391-424
		// to 200-281 MB, and in a 300 MB container drained at 27,200/s
		// instead of 12,400/s (bench/scale). The price is disk: 495 MB
		// for that backlog instead of 180 MB. Tables written compressed
		// by earlier versions are still read.
		WithCompression(options.None).
		WithSyncWrites(opts.SyncWrites)
	bopts.TableSizeMultiplier = 1
	if len(opts.EncryptionKey) > 0 {
		bopts = bopts.WithEncryptionKey(opts.EncryptionKey).
			WithEncryptionKeyRotationDuration(30 * 24 * time.Hour)
	}
	removeEmptyLogs(dir, logger(opts.Logger))
	if err := rekey(dir, opts.EncryptionKey, opts.PreviousKeys, logger(opts.Logger)); err != nil {
		return nil, err
	}
	bdb, err := badger.Open(bopts)
	if err != nil {
		if strings.Contains(err.Error(), "Encryption key mismatch") || strings.Contains(err.Error(), "encryption key") {
			return nil, fmt.Errorf("opening badger database in %s: %s: %w", dir, mismatch(opts.PreviousKeys), err)
		}
		return nil, fmt.Errorf("opening badger database in %s: %w", dir, err)
	}
	db := &DB{
		DB: bdb, log: logger(opts.Logger), dir: dir, closeTimeout: opts.CloseTimeout,
		space: newSpaceGuard(dir, opts.MinFreeSpace, opts.FreeSpace, logger(opts.Logger)),
		stop:  make(chan struct{}), done: make(chan struct{}), spaceDone: make(chan struct{}),
	}
	if db.closeTimeout <= 0 {
		db.closeTimeout = 30 * time.Second
	}
	interval := opts.GCInterval
	if interval <= 0 {
		interval = 5 * time.Minute
	}
	go db.upkeep(interval)
	go db.space.watch(spacePoll, db.stop, db.spaceDone)
	return db, nil
}

// Dir is the directory the database lives in.
func (db *DB) Dir() string { return db.dir }

// Writable returns a *LowSpaceError while the filesystem has less free
// space than Options.MinFreeSpace, nil otherwise. Writes that add data
// (new messages, registrations, push windows, the next attempts) ask first;
// those that settle what is under way, small and bounded, do not.
func (db *DB) Writable() error { return db.space.check() }

// SetMinFreeSpace changes the minimum (see Options.MinFreeSpace), for a
// reloaded config. Writable follows it at once.
func (db *DB) SetMinFreeSpace(n int64) { db.space.min.Store(n) }

// FreeSpace is the free space last read on the database's filesystem;
// -1 when it cannot be read.
func (db *DB) FreeSpace() int64 { return db.space.free.Load() }

// Close stops the collector and closes the database. It is safe to call
// more than once. Badger retries a failing flush forever (say the
// directory was removed or the disk is full); Close gives up after the
// close timeout so that Caddy can still stop or reload. What badger could
// not flush stays in its write-ahead log, replayed at the next open.
func (db *DB) Close() error {
	db.once.Do(func() {
		close(db.stop)
		<-db.done
		<-db.spaceDone
		closed := make(chan error, 1)
		go func() { closed <- db.DB.Close() }()
		select {
		case db.closeErr = <-closed:
		case <-time.After(db.closeTimeout):
			db.closeErr = fmt.Errorf("badger did not close within %v: is %s still there and writable? Unflushed writes stay in its write-ahead log", db.closeTimeout, db.dir)
		}
	})
	return db.closeErr
}

func (db *DB) upkeep(every time.Duration) {
	defer close(db.done)
	t := time.NewTicker(every)
	defer t.Stop()
	r := newReclaimer()
	for {
		select {
		case <-db.stop:
			return
		case <-t.C:
			// Even when space is low: the tombstones are small, and the
			// compactions they cause give space back.
			db.reclaim(r)
			if db.Writable() != nil {
				continue // a rewrite needs room before it frees any
			}
			// One rewrite per tick at most; keep going while badger finds
			// files worth rewriting.
			for db.RunValueLogGC(0.5) == nil {
				select {
				case <-db.stop:
					return
				default:
				}
			}
		}
	}
}

func (db *DB) reclaim(r *reclaimer) {
	start := time.Now()
	marked, err := r.reclaim(db.DB, start, db.stop)
	if err != nil {
		db.log.Warn("reclaiming the space of expired and deleted entries", zap.Int("tables_marked", marked), zap.Error(err))
		return
	}
	if marked > 0 {
		db.log.Debug("marked mostly dead tables for rewriting", zap.Int("tables", marked), zap.Duration("took", time.Since(start)))
	}
}

// Update runs fn in a read-write transaction, retrying when badger reports
// a conflict with a concurrent transaction. Callers' fn must be idempotent.
func (db *DB) Update(fn func(txn *badger.Txn) error) error {
	return Update(db.DB, fn)
}

// Update is DB.Update for a bare *badger.DB.
func Update(db *badger.DB, fn func(txn *badger.Txn) error) error {
	return RetryConflicts(func() error { return db.Update(fn) })
}

// RetryConflicts runs fn again while it fails with badger.ErrConflict, for
// writes that span transactions of their own making. fn must be
// idempotent.
func RetryConflicts(fn func() error) error {
	var err error
	for attempt := 0; attempt < 50; attempt++ {
		err = fn()
		if !errors.Is(err, badger.ErrConflict) {
			return err
		}
		// Back off a little so the winner can finish; contention on one key
		// is short-lived by construction in the callers.
		time.Sleep(time.Duration(attempt+1) * 100 * time.Microsecond)
	}
	return err
}

func logger(l *zap.Logger) *zap.Logger {
	if l == nil {
		return zap.NewNop()
	}
	return l
}

// badgerLogger adapts zap to badger.Logger, whose warning method is named
// Warningf where zap's sugared logger says Warnf. Badger's warnings and
// errors keep their level; its info lines (tables opened, compactions)
// are routine for a database inside a web server, so they go to debug,
// and its debug lines, a trace of its internals, are dropped.
type badgerLogger struct{ l *zap.Logger }

func (b badgerLogger) Errorf(f string, a ...any)   { b.l.Sugar().Errorf(trim(f), a...) }
func (b badgerLogger) Warningf(f string, a ...any) { b.l.Sugar().Warnf(trim(f), a...) }
func (b badgerLogger) Infof(f string, a ...any)    { b.l.Sugar().Debugf(trim(f), a...) }
func (b badgerLogger) Debugf(string, ...any)       {}

// trim drops the trailing newline badger puts on its format strings.
func trim(f string) string {
	if n := len(f); n > 0 && f[n-1] == '\n' {
		return f[:n-1]
	}
	return f
}
