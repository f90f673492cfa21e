package store

import (
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// eventually polls cond, for what the space watcher does on its own time.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestWritableFollowsFreeSpace(t *testing.T) {
	var free atomic.Int64
	free.Store(900 << 20)
	core, logs := observer.New(zapcore.InfoLevel)
	dir := t.TempDir()
	db, err := Open(dir, Options{
		Logger: zap.New(core).Named("webhooks.store"), MinFreeSpace: 256 << 20,
		FreeSpace: func(string) (int64, error) { return free.Load(), nil },
	})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.Writable(); err != nil {
		t.Fatalf("900 MiB free: %v", err)
	}
	if got := db.FreeSpace(); got != 900<<20 {
		t.Fatalf("FreeSpace = %d", got)
	}

	free.Store(100 << 20)
	// A write asks for a fresh reading, not the poller's last one.
	time.Sleep(2 * spaceFresh)
	err = db.Writable()
	var low *LowSpaceError
	if !errors.As(err, &low) || !errors.Is(err, ErrLowSpace) || low.Free != 100<<20 || low.Min != 256<<20 {
		t.Fatalf("error %#v", err)
	}
	for _, want := range []string{"100.0 MiB free", dir, "min_free_space (256.0 MiB)"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("%q does not say %q", err, want)
		}
	}
	eventually(t, "the poller to log it", func() bool { return logs.FilterMessageSnippet("low on disk space").Len() > 0 })
	time.Sleep(3 * spacePoll) // more readings, still low: still one log line
	free.Store(300 << 20)
	time.Sleep(2 * spaceFresh)
	if err := db.Writable(); err != nil {
		t.Fatalf("300 MiB free: %v", err)
	}
	eventually(t, "the poller to log the recovery", func() bool { return logs.FilterMessageSnippet("disk space again").Len() > 0 })

	var lowLines, backLines int
	for _, e := range logs.All() {
		switch {
		case e.Level == zapcore.ErrorLevel && strings.Contains(e.Message, "low on disk space"):
			lowLines++
			// The guard speaks for the store, not for badger.
			if e.LoggerName != "webhooks.store" {
				t.Errorf("logged as %q", e.LoggerName)
			}
		case e.Level == zapcore.InfoLevel && strings.Contains(e.Message, "disk space again"):
			backLines++
		}
	}
	if lowLines != 1 || backLines != 1 {
		t.Fatalf("%d low and %d recovered lines, want one each: %v", lowLines, backLines, logs.All())
	}
}

func TestWritableWithoutMinimumOrReading(t *testing.T) {
	core, logs := observer.New(zapcore.WarnLevel)
	off, err := Open(t.TempDir(), Options{
		Logger:    zap.New(core),
		FreeSpace: func(string) (int64, error) { return 0, nil },
	})
	if err != nil {
		t.Fatal(err)
	}
	defer off.Close()
	if err := off.Writable(); err != nil {
		t.Fatalf("no minimum set, yet %v", err)
	}

	broken, err := Open(t.TempDir(), Options{
		Logger: zap.New(core), MinFreeSpace: 1 << 20,
		FreeSpace: func(string) (int64, error) { return 0, errors.New("statfs: not supported") },
	})
	if err != nil {
		t.Fatal(err)
	}
	defer broken.Close()
	time.Sleep(3 * spacePoll)
	if err := broken.Writable(); err != nil || broken.FreeSpace() != -1 {
		t.Fatalf("unreadable free space: %v, %d", err, broken.FreeSpace())
	}
	if n := logs.FilterMessageSnippet("min_free_space is not enforced").Len(); n != 1 {
		t.Fatalf("%d warnings about the unreadable free space, want 1", n)
	}
}

func TestFreeSpaceOfARealFilesystem(t *testing.T) {
	free, err := freeSpace(t.TempDir())
	if err != nil || free <= 0 {
		t.Fatalf("freeSpace = %d, %v", free, err)
	}
}

func TestFormatBytes(t *testing.T) {
	for n, want := range map[int64]string{
		0: "0 B", 1023: "1023 B", 1 << 10: "1.0 KiB", 256 << 20: "256.0 MiB",
		3 << 29: "1.5 GiB", 2 << 40: "2.0 TiB",
	} {
		if got := FormatBytes(n); got != want {
			t.Errorf("FormatBytes(%d) = %q, want %q", n, got, want)
		}
	}
}

// BenchmarkWritable is what the guard adds to every publish and push,
// with the real statfs of the test's filesystem.
func BenchmarkWritable(b *testing.B) {
	db := mustOpen(b, b.TempDir(), Options{MinFreeSpace: 1 << 20})
	defer db.Close()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := db.Writable(); err != nil {
				b.Fatal(err)
			}
		}
	})
}
