package store

import (
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// DefaultMinFreeSpace is the free space below which new writes are
// refused when no minimum is configured. It covers what badger writes on
// its own once writes stop: flushing its memtables (2 × 8 MB) and
// compacting level 0 into the next level, which rewrites up to its
// 15 tables of about 8 MB before the old ones are deleted.
const DefaultMinFreeSpace = 256 << 20

// spacePoll is how often the free space is read for the log and the
// metric. A write asks for a reading no older than spaceFresh: a disk
// filled by something else between two polls would otherwise take the
// next write's page, and with it the process (seen in
// TestFullDiskDoesNotKillCaddy). A reading is a statfs call of about a
// microsecond, so at most a thousand a second cost nothing that shows.
const (
	spacePoll  = 100 * time.Millisecond
	spaceFresh = time.Millisecond
)

// ErrLowSpace matches every LowSpaceError.
var ErrLowSpace = errors.New("low on disk space")

// LowSpaceError refuses a write because the filesystem holding the
// database has less free space than the configured minimum.
//
// Badger writes through memory-mapped files (its write-ahead log and every
// table it builds). When the filesystem cannot back a page of such a
// mapping, the kernel kills the process with SIGBUS: not an error badger
// could return, but the end of Caddy and of every site it serves. So
// writes that add data stop while there is still room for badger's own
// flushes and compactions, and resume once space is freed.
type LowSpaceError struct {
	Dir       string
	Free, Min int64
}

func (e *LowSpaceError) Error() string {
	return fmt.Sprintf("only %s free on the filesystem of %s, less than min_free_space (%s): new messages, registrations and pushes are refused until space is freed",
		FormatBytes(e.Free), e.Dir, FormatBytes(e.Min))
}

// Is makes errors.Is(err, ErrLowSpace) true.
func (e *LowSpaceError) Is(target error) bool { return target == ErrLowSpace }

// FormatBytes writes a size the way operators read it (MiB and up, binary).
func FormatBytes(n int64) string {
	const unit = 1 << 10
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit && exp < 4; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTP"[exp])
}

// spaceGuard keeps the last reading of the free space under dir.
type spaceGuard struct {
	dir    string
	min    atomic.Int64 // <= 0: watched, not enforced
	statfs func(dir string) (int64, error)
	log    *zap.Logger
	free   atomic.Int64 // -1 until known
	start  time.Time    // monotonic base of readAt
	readAt atomic.Int64 // when free was read, in nanoseconds since start
	low    bool         // as last logged; only the poller touches it
	failed bool         // a reading failed and was logged
}

func newSpaceGuard(dir string, min int64, statfs func(string) (int64, error), log *zap.Logger) *spaceGuard {
	g := &spaceGuard{dir: dir, statfs: statfs, log: log, start: time.Now()}
	g.min.Store(min)
	g.free.Store(-1)
	if statfs == nil {
		g.statfs = freeSpace
	}
	g.read()
	return g
}

// check returns a *LowSpaceError while the last reading is under the
// minimum. A filesystem whose free space cannot be read is not guarded.
func (g *spaceGuard) check() error {
	min := g.min.Load()
	if min <= 0 {
		return nil
	}
	free := g.free.Load()
	// One caller takes the stale reading's place and reads afresh; the
	// writes racing it use the reading it replaces, at most a statfs
	// call older.
	now, last := time.Since(g.start).Nanoseconds(), g.readAt.Load()
	if time.Duration(now-last) > spaceFresh && g.readAt.CompareAndSwap(last, now) {
		free, _ = g.measure()
	}
	if free >= 0 && free < min {
		return &LowSpaceError{Dir: g.dir, Free: free, Min: min}
	}
	return nil
}

// measure reads the free space now and keeps the reading (-1 if the
// reading failed).
func (g *spaceGuard) measure() (int64, error) {
	free, err := g.statfs(g.dir)
	if err != nil {
		free = -1
	}
	g.free.Store(free)
	g.readAt.Store(time.Since(g.start).Nanoseconds())
	return free, err
}

// read takes one reading and logs when the guard starts or stops
// refusing writes, once per change rather than once per refused write.
func (g *spaceGuard) read() {
	min := g.min.Load()
	free, err := g.measure()
	if err != nil {
		if !g.failed && min > 0 {
			g.failed = true
			g.log.Warn("cannot read the free disk space of the webhook store; min_free_space is not enforced",
				zap.String("dir", g.dir), zap.Error(err))
		}
		return
	}
	g.failed = false
	switch low := min > 0 && free < min; {
	case low && !g.low:
		g.log.Error("webhook store is low on disk space: refusing new messages, registrations and pushes, and pausing deliveries, until space is freed",
			zap.String("dir", g.dir), zap.Int64("free_bytes", free), zap.Int64("min_free_space", min))
		g.low = true
	case !low && g.low:
		g.log.Info("webhook store has disk space again: accepting writes and resuming deliveries",
			zap.String("dir", g.dir), zap.Int64("free_bytes", free), zap.Int64("min_free_space", min))
		g.low = false
	}
}

// watch reads the free space every interval until stop is closed.
func (g *spaceGuard) watch(every time.Duration, stop <-chan struct{}, done chan<- struct{}) {
	defer close(done)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			g.read()
		}
	}
}
