package caddywebhook

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig"
)

// A backup taken from the admin endpoint while Caddy runs restores, with
// `caddy webhooks-restore`'s code, into the store another config names;
// Caddy started on it delivers what was queued when the backup was
// taken.
func TestBackupAndRestoreThroughCaddy(t *testing.T) {
	t.Setenv("E2E_BACKUP_KEY", base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{5}, 32)))
	var mu sync.Mutex
	delivered := map[string]bool{}
	rcv, healthy := flakyReceiver(t, http.StatusServiceUnavailable, func(r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		b, _ := io.ReadAll(r.Body)
		delivered[string(b)] = true
	})
	configFor := func(dir string) string {
		global, _ := globalOptions(t, dir, fmt.Sprintf(`encryption_key {env.E2E_BACKUP_KEY}
		allow_private_targets
		retry 1h
		subscription s {
			url %s
			events *
		}`, rcv.URL))
		return global + "\nhttp://localhost:9080 {\n\twebhook_publish\n}\n"
	}
	original, restored := t.TempDir(), filepath.Join(t.TempDir(), "restored")

	tester := startCaddy(t, configFor(original))
	for i := range 3 {
		publish(t, tester.Client, "POST", fmt.Sprintf(`{"event":"e","id":"m-%d","data":{"n":%d}}`, i, i))
	}
	waitFor(t, "the first attempts to fail and be recorded", func() bool {
		_, body := admin(t, "GET", "/webhooks/subscriptions/static:s/attempts")
		return strings.Count(body, `"delivery_id"`) == 3
	})
	res, err := http.Get("http://localhost:2999/webhooks/backup")
	if err != nil {
		t.Fatal(err)
	}
	backup, err := io.ReadAll(res.Body)
	res.Body.Close()
	if err != nil || res.StatusCode != 200 || res.Header.Get("Content-Type") != "application/octet-stream" ||
		!strings.HasPrefix(res.Header.Get("Content-Disposition"), `attachment; filename="webhooks-`) {
		t.Fatalf("backup: %d %v %v", res.StatusCode, res.Header, err)
	}
	if st, body := admin(t, "POST", "/webhooks/backup"); st != http.StatusMethodNotAllowed {
		t.Errorf("POST /webhooks/backup: %d %s", st, body)
	}
	loadConfig(t, emptyConfig) // Caddy stops using the original store

	cfg, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(configFor(restored)), nil)
	if err != nil {
		t.Fatal(err)
	}
	dir, _, err := restoreFor(cfg, bytes.NewReader(backup))
	if err != nil || dir != restored {
		t.Fatalf("restore into %s: %v", dir, err)
	}
	if _, _, err := restoreFor(cfg, bytes.NewReader(backup)); err == nil || !strings.Contains(err.Error(), "is not empty") {
		t.Fatalf("a second restore into the same store: %v", err)
	}
	if dirHas(t, restored, `"n":1`) {
		t.Error("the restored store is not encrypted")
	}

	mu.Lock()
	clear(delivered)
	mu.Unlock()
	healthy.Store(true)
	loadConfig(t, configFor(restored))
	if st, body := admin(t, "POST", "/webhooks/subscriptions/static:s/retry"); st != 200 || !strings.Contains(body, `"rescheduled":3`) {
		t.Fatalf("retry the restored queue: %d %s", st, body)
	}
	waitFor(t, "the restored deliveries", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(delivered) == 3
	})
}

// The command a user runs: `caddy webhooks-restore` on a backup taken
// from a running Caddy process, into the store its --config names; it
// refuses a store that exists, a backup cut short and a damaged one,
// which --verify tells apart from a whole one without restoring.
func TestRestoreCommand(t *testing.T) {
	bin := caddyBinary(t)
	admin, port := freePort(t), freePort(t)
	cfg := func(dir string) string { return processConfig(admin, dir, "", port, "\twebhook_publish\n") }
	startCaddyProcess(t, bin, cfg(t.TempDir()), fmt.Sprintf("http://127.0.0.1:%d/", port))
	res, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/webhooks/backup", admin))
	if err != nil {
		t.Fatal(err)
	}
	backup, err := io.ReadAll(res.Body)
	res.Body.Close()
	if err != nil || res.StatusCode != 200 {
		t.Fatalf("backup: %d %v", res.StatusCode, err)
	}

	home := t.TempDir()
	write := func(name string, b []byte) string {
		p := filepath.Join(home, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	whole, cut := write("whole.bak", backup), write("cut.bak", backup[:len(backup)-1])
	i := bytes.Index(backup, []byte(`"sha256":"`))
	if i < 0 {
		t.Fatal("the backup's end entry has no checksum")
	}
	changed := append([]byte{}, backup...)
	changed[i+len(`"sha256":"`)] ^= 1
	damaged := write("damaged.bak", changed)
	restore := func(storage, input string) (string, error) {
		cmd := exec.Command(bin, "webhooks-restore", "--config", write("Caddyfile", []byte(cfg(storage))), "--input", input)
		cmd.Env = append(os.Environ(), "XDG_CONFIG_HOME="+home, "XDG_DATA_HOME="+home)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	target := filepath.Join(t.TempDir(), "restored")
	if out, err := restore(target, cut); err == nil || !strings.Contains(out, "incomplete") {
		t.Fatalf("restore of a backup cut short: %v\n%s", err, out)
	}
	if out, err := restore(target, damaged); err == nil || !strings.Contains(out, "damaged") {
		t.Fatalf("restore of a damaged backup: %v\n%s", err, out)
	}
	verify := func(input string) (string, error) {
		out, err := exec.Command(bin, "webhooks-restore", "--verify", "--input", input).CombinedOutput()
		return string(out), err
	}
	if out, err := verify(damaged); err == nil || !strings.Contains(out, "damaged") {
		t.Fatalf("verify of a damaged backup: %v\n%s", err, out)
	}
	if out, err := verify(whole); err != nil || !strings.Contains(out, "the backup is whole") {
		t.Fatalf("verify: %v\n%s", err, out)
	}
	out, err := restore(target, whole)
	if err != nil || !strings.Contains(out, "into the webhooks store in "+target) || !strings.Contains(out, "checksum matched") {
		t.Fatalf("restore: %v\n%s", err, out)
	}
	// As caddy run does, so that a restore in a container stays in its
	// memory (automemlimit logs what it did either way).
	if !strings.Contains(out, "GOMEMLIMIT") {
		t.Errorf("the restore did not set its memory limit:\n%s", out)
	}
	if out, err := restore(target, whole); err == nil || !strings.Contains(out, "is not empty") {
		t.Fatalf("restore over a store: %v\n%s", err, out)
	}
}
