// Command killstore kills a process writing to the store with SIGKILL
// hundreds of times, at random moments, and checks every time that the
// store opens again with everything that was acknowledged. bench/crash
// does the same to a whole Caddy three times; this aims at badger's own
// crash windows (memtable flushes, table and log file creation and
// deletion, compactions), which one kill in a few seconds of traffic
// rarely meets.
//
// The writer opens the store as the webhooks app does (internal/store),
// then commits transactions of -keys values of -size bytes, each also
// deleting the keys written -keep transactions before, so that flushes,
// compactions and deletions of tables and logs all happen within a short
// life. It prints each transaction's number once committed. The next
// writer first checks that the last -keep - 1 acknowledged transactions
// are all there, in full. One kill in five comes at a random moment in
// the first half of -max-life after the writer started, often while it
// is still opening the store (replaying and flushing its logs).
//
//	go run ./bench/killstore -kills 300
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"math/rand/v2"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/dgraph-io/badger/v4"

	"github.com/hookgate/caddy-webhook/internal/store"
)

type settings struct {
	keys, size, keep int
}

func main() {
	kills := flag.Int("kills", 300, "how many times to kill the writer")
	maxLife := flag.Duration("max-life", 400*time.Millisecond, "longest a writer lives before the kill (each is killed at a random moment up to this)")
	dir := flag.String("dir", "", "the store's directory (default: a new temporary one, removed after a passing run)")
	var s settings
	flag.IntVar(&s.keys, "keys", 50, "values per transaction")
	flag.IntVar(&s.size, "size", 1000, "bytes per value")
	flag.IntVar(&s.keep, "keep", 40, "transactions kept: each deletes the keys of the one this many before it")
	child := flag.Bool("writer", false, "run as the writer (internal)")
	from := flag.Int("from", 1, "the writer's first transaction (internal)")
	flag.Parse()
	if s.keep < 2 || s.keys < 1 || s.size < 32 {
		log.Fatal("-keep must be at least 2, -keys at least 1 and -size at least 32")
	}
	if *child {
		if err := write(*dir, s, *from); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		return
	}
	if err := run(*dir, s, *kills, *maxLife); err != nil {
		log.Fatal(err)
	}
}

func run(dir string, s settings, kills int, maxLife time.Duration) error {
	temporary := dir == ""
	if temporary {
		var err error
		if dir, err = os.MkdirTemp("", "killstore"); err != nil {
			return err
		}
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	acked, opens, openKills := 0, []time.Duration{}, 0
	start := time.Now()
	// After the last kill one more writer checks what it left, and is
	// then stopped gracefully.
	for k := 0; k <= kills; k++ {
		w, err := startWriter(self, dir, s, acked+1)
		if err != nil {
			return err
		}
		// One kill in five comes while the writer opens the store
		// (replaying its logs, flushing what they held).
		if k < kills && rand.IntN(5) == 0 {
			time.Sleep(rand.N(maxLife / 2))
			_ = w.cmd.Process.Signal(syscall.SIGKILL)
			if msg := w.wait(); msg != "" {
				return fmt.Errorf("after %d kills the store did not open again, or lost what was acknowledged (kept in %s):\n%s", k, dir, msg)
			}
			acked = max(acked, w.last)
			if w.last == 0 {
				openKills++
			}
			continue
		}
		opened, ok := <-w.ready
		if !ok {
			return fmt.Errorf("after %d kills the store did not open again, or lost what was acknowledged (kept in %s):\n%s", k, dir, w.wait())
		}
		opens = append(opens, opened)
		if k == kills {
			_ = w.cmd.Process.Signal(syscall.SIGTERM)
			if msg := w.wait(); msg != "" {
				return fmt.Errorf("the last writer: %s", msg)
			}
			break
		}
		time.Sleep(rand.N(maxLife))
		_ = w.cmd.Process.Signal(syscall.SIGKILL)
		w.wait()
		acked = max(acked, w.last)
		if (k+1)%50 == 0 {
			fmt.Printf("%d kills, %d transactions acknowledged, %s\n", k+1, acked, du(dir))
		}
	}
	slowest := time.Duration(0)
	for _, d := range opens {
		slowest = max(slowest, d)
	}
	fmt.Printf("PASS: %d kills in %v (%d before the writer had committed anything), %d transactions acknowledged, every reopen found the last %d whole; slowest open %v\n",
		kills, time.Since(start).Round(time.Second), openKills, acked, s.keep-1, slowest.Round(time.Millisecond))
	if temporary {
		return os.RemoveAll(dir)
	}
	return nil
}

// writer is one writer process as the parent sees it.
type writer struct {
	cmd    *exec.Cmd
	stderr strings.Builder
	// ready receives how long the writer took to open the store and find
	// what was acknowledged; it is closed without a value if it never did.
	ready chan time.Duration
	acks  chan int // the last transaction acknowledged, when its output ends
	last  int      // the same, once reaped
}

func startWriter(self, dir string, s settings, from int) (*writer, error) {
	w := &writer{ready: make(chan time.Duration, 1), acks: make(chan int, 1)}
	w.cmd = exec.Command(self, "-writer", "-dir", dir, "-from", strconv.Itoa(from),
		"-keys", strconv.Itoa(s.keys), "-size", strconv.Itoa(s.size), "-keep", strconv.Itoa(s.keep))
	w.cmd.Stderr = &w.stderr
	out, err := w.cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	started := time.Now()
	if err := w.cmd.Start(); err != nil {
		return nil, err
	}
	go func() {
		lines := bufio.NewScanner(out)
		if lines.Scan() && lines.Text() == "ready" {
			w.ready <- time.Since(started)
		}
		close(w.ready)
		last := 0
		for lines.Scan() {
			if n, err := strconv.Atoi(lines.Text()); err == nil {
				last = n
			}
		}
		w.acks <- last
	}()
	return w, nil
}

// wait reaps the writer, reading its output to the end first, and
// returns what it said on stderr.
func (w *writer) wait() string {
	w.last = <-w.acks
	_ = w.cmd.Wait()
	return w.stderr.String()
}

func key(txn, i int) []byte { return fmt.Appendf(nil, "delivery/killstore/%09d/%03d", txn, i) }

func value(txn, i, size int) []byte {
	v := make([]byte, size)
	copy(v, fmt.Sprintf("%d/%d/", txn, i))
	return v
}

// write runs in the writer process: check, then commit until killed.
func write(dir string, s settings, from int) error {
	db, err := store.Open(dir, store.Options{})
	if err != nil {
		return fmt.Errorf("opening the store: %w", err)
	}
	if err := check(db, s, from-1); err != nil {
		return err
	}
	out := bufio.NewWriter(os.Stdout)
	fmt.Fprintln(out, "ready")
	if err := out.Flush(); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	for txn := from; ctx.Err() == nil; txn++ {
		err := db.Update(func(t *badger.Txn) error {
			for i := range s.keys {
				if err := t.Set(key(txn, i), value(txn, i, s.size)); err != nil {
					return err
				}
				if old := txn - s.keep; old > 0 {
					if err := t.Delete(key(old, i)); err != nil {
						return err
					}
				}
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("transaction %d: %w", txn, err)
		}
		fmt.Fprintln(out, txn)
		if err := out.Flush(); err != nil {
			return err
		}
	}
	return db.Close()
}

// check finds the acknowledged transactions up to last whole, but for
// the oldest one kept: a transaction may have been committed without
// being acknowledged (killed before it could say so), and it deleted
// that one.
func check(db *store.DB, s settings, last int) error {
	return db.View(func(t *badger.Txn) error {
		for txn := max(1, last-s.keep+2); txn <= last; txn++ {
			for i := range s.keys {
				item, err := t.Get(key(txn, i))
				if errors.Is(err, badger.ErrKeyNotFound) {
					return fmt.Errorf("transaction %d, acknowledged, lost its key %d", txn, i)
				}
				if err != nil {
					return err
				}
				if err := item.Value(func(v []byte) error {
					if string(v) != string(value(txn, i, s.size)) {
						return fmt.Errorf("transaction %d, key %d: wrong value", txn, i)
					}
					return nil
				}); err != nil {
					return err
				}
			}
		}
		return nil
	})
}

// du is the size of the files in the store's directory (as their sizes
// say: badger's logs are sparse), for the progress lines.
func du(dir string) string {
	var total int64
	_ = filepath.WalkDir(dir, func(_ string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			if fi, err := d.Info(); err == nil {
				total += fi.Size()
			}
		}
		return nil
	})
	return fmt.Sprintf("%.0f MB of files", float64(total)/1e6)
}
