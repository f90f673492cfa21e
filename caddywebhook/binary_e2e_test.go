package caddywebhook

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// caddyBinary builds ./cmd/caddy once per test run, with the same race
// setting as the tests so the build cache is shared.
func caddyBinary(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("builds a Caddy binary")
	}
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "caddy-webhook-bin")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "caddy")
		args := []string{"build", "-o", binPath}
		if raceEnabled {
			args = append(args, "-race")
		}
		out, err := exec.Command("go", append(args, "../cmd/caddy")...).CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// processConfig is the Caddyfile of a Caddy process in these tests: its
// admin endpoint, the webhooks app in storage with more options (each
// line ending in a newline), and one site on port.
func processConfig(admin int, storage, options string, port int, site string) string {
	return fmt.Sprintf(`{
	admin 127.0.0.1:%d
	skip_install_trust
	webhooks {
		storage_dir %s
		min_free_space 16MiB
%s	}
}
http://127.0.0.1:%d {
%s}
`, admin, storage, options, port, site)
}

// caddyProcess is a Caddy binary running a Caddyfile.
type caddyProcess struct {
	cmd *exec.Cmd
	log *os.File
}

func startCaddyProcess(t *testing.T, bin, caddyfile, probeURL string) *caddyProcess {
	t.Helper()
	dir := t.TempDir()
	cf := filepath.Join(dir, "Caddyfile")
	if err := os.WriteFile(cf, []byte(caddyfile), 0o600); err != nil {
		t.Fatal(err)
	}
	logf, err := os.Create(filepath.Join(dir, "caddy.out"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "run", "--config", cf, "--adapter", "caddyfile")
	cmd.Stdout, cmd.Stderr = logf, logf
	// Keep autosave and certificates out of the developer's home.
	cmd.Env = append(os.Environ(), "XDG_CONFIG_HOME="+dir, "XDG_DATA_HOME="+dir)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &caddyProcess{cmd: cmd, log: logf}
	t.Cleanup(p.kill)
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if res, err := http.Get(probeURL); err == nil {
			res.Body.Close()
			return p
		}
	}
	out, _ := os.ReadFile(logf.Name())
	t.Fatalf("caddy did not come up:\n%s", out)
	return nil
}

// kill sends SIGKILL: no shutdown hooks run, badger is not closed.
func (p *caddyProcess) kill() {
	if p.cmd.ProcessState == nil {
		p.cmd.Process.Kill()
		p.cmd.Wait()
	}
	p.log.Close()
}

func TestIngestWindowSurvivesKill9(t *testing.T) {
	bin := caddyBinary(t)
	up := newTestUpstream(t)
	admin, port := freePort(t), freePort(t)
	storage := t.TempDir()
	cfg := processConfig(admin, storage, "", port, fmt.Sprintf(`	webhook_ingest {
		access_key {env.KILL_ACCESS_KEY}
		client acme acme-kill-key interval 1h
	}
	reverse_proxy %s
`, up.addr()))
	t.Setenv("KILL_ACCESS_KEY", "kill-access")
	url := fmt.Sprintf("http://127.0.0.1:%d/", port)

	push := func() (int, string) {
		req, _ := http.NewRequest("POST", url, strings.NewReader(`{"menu":[]}`))
		req.Header.Set("Authorization", "Token kill-access")
		req.Header.Set("X-Webhook-Token", "acme-kill-key")
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		return res.StatusCode, string(b)
	}

	p := startCaddyProcess(t, bin, cfg, url)
	status, body := push()
	if status != 200 {
		t.Fatalf("first push: %d %s", status, body)
	}
	p.kill()

	startCaddyProcess(t, bin, cfg, url)
	status, body = push()
	if status != 400 || !strings.Contains(body, "next push not allowed until after") {
		t.Fatalf("after kill -9: %d %s", status, body)
	}
	if n := len(up.requests()); n != 1 {
		t.Fatalf("upstream got %d pushes, want 1", n)
	}
}

// Messages acknowledged with 202 while the subscriber is down are
// delivered after Caddy is killed with SIGKILL and started again.
func TestBacklogDeliveredAfterKill9(t *testing.T) {
	bin := caddyBinary(t)
	sub := newSubscriber(t)
	sub.fail.Store(true)
	admin, port := freePort(t), freePort(t)
	cfg := processConfig(admin, t.TempDir(), fmt.Sprintf(`		allow_private_targets
		retry 1s 1s 1s 1s 1s 1s 1s 1s 1s 1s
		subscription backend {
			url %s
			events *
		}
`, sub.URL), port, "\twebhook_publish\n")
	url := fmt.Sprintf("http://127.0.0.1:%d/", port)

	p := startCaddyProcess(t, bin, cfg, url)
	const n = 30
	ids := map[string]bool{}
	for i := 0; i < n; i++ {
		res, err := http.Post(url, "application/json", strings.NewReader(fmt.Sprintf(`{"event":"e","id":"m-%d","data":{"i":%d}}`, i, i)))
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if res.StatusCode != 202 {
			t.Fatalf("publish %d: %d", i, res.StatusCode)
		}
		ids[fmt.Sprintf("m-%d", i)] = true
	}
	p.kill()

	sub.fail.Store(false)
	startCaddyProcess(t, bin, cfg, url)
	waitFor(t, "the backlog", func() bool {
		got := map[string]bool{}
		for _, r := range sub.received() {
			got[r.Header.Get("Webhook-Id")] = true
		}
		return len(got) == n
	})
	for _, r := range sub.received() {
		if !ids[r.Header.Get("Webhook-Id")] {
			t.Fatalf("unexpected delivery %q", r.Header.Get("Webhook-Id"))
		}
	}
	t.Logf("%d messages, %d deliveries after restart (duplicates: %d)", n, len(sub.received()), len(sub.received())-n)
}

// `caddy validate` provisions the config without starting it. It must
// work while Caddy runs with the same storage_dir (badger allows one
// opener per directory), create no database, and still catch a bad
// setting.
func TestValidateWhileRunning(t *testing.T) {
	bin := caddyBinary(t)
	admin, port := freePort(t), freePort(t)
	storage := t.TempDir()
	cfg := func(dir, sub string) string {
		return processConfig(admin, dir, fmt.Sprintf("\t\tsubscription s {\n\t\t\t%s\n\t\t\tevents *\n\t\t}\n", sub), port, "\twebhook_publish\n")
	}
	url := fmt.Sprintf("http://127.0.0.1:%d/", port)
	startCaddyProcess(t, bin, cfg(storage, "url https://example.com/hook"), url)

	validate := func(caddyfile string) (string, error) {
		home := t.TempDir()
		cf := filepath.Join(home, "Caddyfile")
		if err := os.WriteFile(cf, []byte(caddyfile), 0o600); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(bin, "validate", "--config", cf, "--adapter", "caddyfile")
		cmd.Env = append(os.Environ(), "XDG_CONFIG_HOME="+home, "XDG_DATA_HOME="+home)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	if out, err := validate(cfg(storage, "url https://example.com/hook")); err != nil || !strings.Contains(out, "Valid configuration") {
		t.Fatalf("validate while running: %v\n%s", err, out)
	}

	fresh := filepath.Join(t.TempDir(), "never-opened")
	if out, err := validate(cfg(fresh, "url https://example.com/hook")); err != nil {
		t.Fatalf("validate with a fresh storage_dir: %v\n%s", err, out)
	}
	if _, err := os.Stat(fresh); !os.IsNotExist(err) {
		t.Fatalf("validate left %s behind (stat: %v)", fresh, err)
	}

	out, err := validate(cfg(storage, "url ftp://example.com/hook"))
	if err == nil || !strings.Contains(out, "subscription") {
		t.Fatalf("validate accepted a bad subscription URL: %v\n%s", err, out)
	}

	// What would keep the store from opening at start is caught too: a
	// key the running store was not written with, a file in the way.
	key := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{9}, 32))
	withKey := strings.Replace(cfg(storage, "url https://example.com/hook"), "storage_dir", "encryption_key "+key+"\n\t\tstorage_dir", 1)
	out, err = validate(withKey)
	if err == nil || !strings.Contains(out, "encryption_key does not match") || strings.Contains(out, key) {
		t.Fatalf("validate with another key than the data's: %v\n%s", err, out)
	}
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	out, err = validate(cfg(file, "url https://example.com/hook"))
	if err == nil || !strings.Contains(out, "not a directory") {
		t.Fatalf("validate with a file as storage_dir: %v\n%s", err, out)
	}

	res, err := http.Post(url, "application/json", strings.NewReader(`{"event":"e","data":{}}`))
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != 202 {
		t.Fatalf("the running Caddy answered a publish with %d after the validations", res.StatusCode)
	}
}
