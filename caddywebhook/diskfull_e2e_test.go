//go:build linux

package caddywebhook

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// smallDisk mounts a tmpfs of the given size for the test, or skips the
// test where that is not allowed (not root, no mount in a container).
func smallDisk(t *testing.T, size string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("mounting a small filesystem needs root")
	}
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size, "tmpfs", dir).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a tmpfs: %v %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v %s", dir, err, out)
		}
	})
	return dir
}

// Badger writes through memory-mapped files, and the kernel kills a
// process that writes to a mapped page its filesystem cannot back
// (SIGBUS). Before min_free_space, filling storage_dir's filesystem
// killed Caddy, and killed it again at every restart while badger
// compacted. Now publishes are refused with 507 first, Caddy survives the
// disk filling up completely, and every acknowledged message is still
// queued after a kill -9 and a restart.
func TestFullDiskDoesNotKillCaddy(t *testing.T) {
	disk := smallDisk(t, "64m") // before caddyBinary's cleanups: unmounted after Caddy is killed
	bin := caddyBinary(t)
	admin, port := freePort(t), freePort(t)
	cfg := fmt.Sprintf(`{
	admin 127.0.0.1:%d
	skip_install_trust
	webhooks {
		storage_dir %s
		min_free_space 24MiB
		allow_private_targets
		retry 1h
		subscription down {
			url http://127.0.0.1:%d/
			events *
		}
	}
}
http://127.0.0.1:%d {
	webhook_publish
}
`, admin, filepath.Join(disk, "db"), freePort(t), port)
	url := fmt.Sprintf("http://127.0.0.1:%d/", port)
	p := startCaddyProcess(t, bin, cfg, url)

	pad := strings.Repeat("x", 2000)
	publish := func(id string) (int, error) {
		res, err := http.Post(url, "application/json", strings.NewReader(`{"event":"e","id":"`+id+`","data":{"p":"`+pad+`"}}`))
		if err != nil {
			return 0, err
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		if res.StatusCode == http.StatusInsufficientStorage && res.Header.Get("Retry-After") == "" {
			return 0, fmt.Errorf("507 without Retry-After: %s", b)
		}
		return res.StatusCode, nil
	}

	// Fill the disk: publish until the store refuses.
	var acked, next atomic.Int64
	var refused atomic.Bool
	var failure error
	var mu sync.Mutex
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !refused.Load() && next.Load() < 100_000 {
				status, err := publish(fmt.Sprint("m-", next.Add(1)))
				switch {
				case err != nil:
					mu.Lock()
					failure = err
					mu.Unlock()
					refused.Store(true)
				case status == http.StatusAccepted:
					acked.Add(1)
				case status == http.StatusInsufficientStorage:
					refused.Store(true)
				default:
					mu.Lock()
					failure = fmt.Errorf("publish answered %d", status)
					mu.Unlock()
					refused.Store(true)
				}
			}
		}()
	}
	wg.Wait()
	if failure != nil {
		out, _ := os.ReadFile(p.log.Name())
		t.Fatalf("after %d acknowledged publishes: %v\n%s", acked.Load(), failure, tail(out, 3000))
	}
	t.Logf("%d publishes acknowledged before the store refused", acked.Load())

	// Badger flushes and compacts what it was given within the reserve.
	// (While it does, a disk filled by something else could still kill
	// Caddy: nothing can pause badger's compactions.) Flushed logs are
	// deleted, so the store may take messages again afterwards.
	if err := settle(disk); err != nil {
		t.Fatal(err)
	}
	switch status, err := publish("settled"); {
	case err != nil:
		out, _ := os.ReadFile(p.log.Name())
		t.Fatalf("publish after badger settled: %v\n%s", err, tail(out, 3000))
	case status == http.StatusAccepted:
		acked.Add(1)
	case status != http.StatusInsufficientStorage:
		t.Fatalf("publish after badger settled: %d", status)
	}

	// Then something else takes the rest of the disk.
	filler := filepath.Join(disk, "filler")
	if err := fill(filler); err != nil {
		t.Fatal(err)
	}
	// The guard reads the free space every 100 ms: until its next reading
	// a publish may still be taken. Then they are refused for good.
	refusals := 0
	for i := 0; refusals < 20; i++ {
		status, err := publish(fmt.Sprint("full-", i))
		switch {
		case err != nil || i == 100:
			out, _ := os.ReadFile(p.log.Name())
			t.Fatalf("publish #%d on a full disk: %d %v\n%s", i, status, err, tail(out, 3000))
		case status == http.StatusAccepted && refusals == 0:
			acked.Add(1)
		case status == http.StatusInsufficientStorage:
			refusals++
		default:
			t.Fatalf("publish #%d on a full disk, after %d refusals: %d", i, refusals, status)
		}
		time.Sleep(50 * time.Millisecond)
	}

	p.kill()
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	startCaddyProcess(t, bin, cfg, url)
	var status int
	var body []byte
	waitFor(t, "the webhooks app to start", func() bool {
		status, body = adminRequestTo(t, admin, "/webhooks/queues")
		return status != http.StatusServiceUnavailable
	})
	var queues []struct{ Queued int64 }
	if status != 200 || json.Unmarshal(body, &queues) != nil || len(queues) != 1 || queues[0].Queued != acked.Load() {
		t.Fatalf("after kill -9 and restart: %d %s, want %d queued", status, body, acked.Load())
	}
	// Until badger has replayed the log it was killed with into a fresh
	// one and deleted the old, both take room, and publishes may still be
	// refused with 507 (nothing stored). Then they are taken again.
	restarted, refusedAfter := time.Now(), 0
	waitFor(t, "a publish to be taken once space is back", func() bool {
		status, err := publish(fmt.Sprint("after-", refusedAfter))
		if err != nil || (status != http.StatusAccepted && status != http.StatusInsufficientStorage) {
			t.Fatalf("publish once space is back: %d %v", status, err)
		}
		if status == http.StatusInsufficientStorage {
			refusedAfter++
			time.Sleep(100 * time.Millisecond)
		}
		return status == http.StatusAccepted
	})
	t.Logf("after the restart, %d publishes refused until %v", refusedAfter, time.Since(restarted).Round(time.Millisecond))
}

// settle waits until the free space of dir's filesystem has not changed
// for two seconds.
func settle(dir string) error {
	last, same := int64(-1), 0
	for range 300 {
		var st syscall.Statfs_t
		if err := syscall.Statfs(dir, &st); err != nil {
			return err
		}
		free := int64(st.Bavail) * st.Bsize
		if free == last {
			if same++; same == 10 {
				return nil
			}
		} else {
			last, same = free, 0
		}
		time.Sleep(200 * time.Millisecond)
	}
	return errors.New("the free space kept changing for a minute")
}

// fill writes to name until the filesystem is full.
func fill(name string) error {
	f, err := os.Create(name)
	if err != nil {
		return err
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	for {
		if _, err := f.Write(buf); err != nil {
			if errors.Is(err, syscall.ENOSPC) {
				return nil
			}
			return err
		}
	}
}

func tail(b []byte, n int) []byte { return b[max(0, len(b)-n):] }

func adminRequestTo(t *testing.T, port int, path string) (int, []byte) {
	t.Helper()
	res, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d%s", port, path))
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, b
}
