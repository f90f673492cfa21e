package caddywebhook

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddytest"
	_ "github.com/caddyserver/caddy/v2/modules/standard"

	"github.com/hookgate/caddy-webhook/ingest"
)

// The end-to-end tests share one in-process Caddy (caddytest's admin on
// localhost:2999, HTTP on 9080); each test loads its own config.
const testBase = "http://localhost:9080"

// The HTTP listener of every end-to-end config: its address as Caddy's
// listener pool names it, and its port.
const (
	testListener = ":9080"
	testPort     = 9080
)

// globalOptions is the global block of every end-to-end config: the
// caddytest ports, a log file to inspect, and a private store. Unless
// extra sets it, min_free_space is 16 MiB rather than the default 256:
// a test machine's disk may well be fuller than a server's.
func globalOptions(t *testing.T, storageDir, extra string) (cfg, logFile string) {
	t.Helper()
	if !strings.Contains(extra, "min_free_space") {
		extra = "min_free_space 16MiB\n\t\t" + extra
	}
	logFile = filepath.Join(t.TempDir(), "caddy.log")
	cfg = fmt.Sprintf(`{
	admin localhost:2999
	http_port 9080
	https_port 9443
	grace_period 1ns
	skip_install_trust
	log {
		output file %s
		level DEBUG
	}
	webhooks {
		storage_dir %s
		%s
	}
}
`, logFile, storageDir, extra)
	return cfg, logFile
}

// emptyConfig is loaded after each test so that its store is closed
// before its temporary directory is removed.
const emptyConfig = `{
	admin localhost:2999
	http_port 9080
	https_port 9443
	grace_period 1ns
	skip_install_trust
}
http://localhost:9080 {
	respond "no test running"
}`

// startCaddy loads cfg into the shared in-process Caddy and unloads it when
// the test ends. Call it after creating the test's directories.
func startCaddy(t *testing.T, cfg string) *caddytest.Tester {
	t.Helper()
	tester := caddytest.NewTester(t)
	// A kept-alive connection belongs to the server of the config that
	// accepted it, and a reload closes it under the next request (EOF).
	tester.Client.Transport.(*http.Transport).DisableKeepAlives = true
	caddyStarted.Do(func() { tester.InitServer(emptyConfig, "caddyfile") })
	loadConfig(t, cfg)
	t.Cleanup(func() { loadConfig(t, emptyConfig) })
	return tester
}

// caddyStarted: caddytest's InitServer starts the in-process Caddy the
// first time; every load after that goes through loadConfig.
var caddyStarted sync.Once

// loadConfig makes cfg (a Caddyfile) the running config, as caddytest's
// InitServer does, but without the check with which InitServer begins:
// one request to the admin endpoint, after which, if it failed, it starts
// a second Caddy whose empty config then replaces the test's. In a full
// run of the suite with -race that request once failed at once, right
// after a reload that was refused (Caddy replaces its admin server
// at every load, and stops the old one in the background); the test that
// followed failed with "POSTed configuration isn't active". Here a request
// that fails is tried again.
func loadConfig(t *testing.T, cfg string) {
	t.Helper()
	adapted, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(cfg), nil)
	if err != nil {
		t.Fatalf("adapting the config: %v", err)
	}
	var want any
	if err := json.Unmarshal(adapted, &want); err != nil {
		t.Fatal(err)
	}
	status, body := adminRequest(t, "POST", "/load", "application/json", adapted)
	if status != http.StatusOK {
		t.Fatalf("loading the config: %d %s", status, body)
	}
	// The load answered once the config ran; check that it is the one
	// running, as caddytest does.
	var got any
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if _, body := adminRequest(t, "GET", "/config/", "", nil); json.Unmarshal(body, &got) == nil && reflect.DeepEqual(got, want) {
			awaitOldServer(t)
			return
		}
	}
	t.Fatalf("the loaded config is not the running one:\nwant %s\ngot  %v", adapted, got)
}

// awaitOldServer waits until the server of the previous config has let go
// of the test port. A load answers once the old servers have been told to
// shut down, not once they have. Until then a test's next connection can
// reach the old server: Caddy opens a socket per config with SO_REUSEPORT,
// and the kernel spreads new connections over every socket on the port. A
// connection the old server has accepted is closed without an answer once
// its shutdown begins (EOF), and one still queued on the old socket is
// reset when that socket closes. One CI run failed each way.
//
// Caddy's listener count drops just before the old socket closes, so on
// Linux the wait also asks the kernel how many sockets listen on the port.
func awaitOldServer(t *testing.T) {
	t.Helper()
	released := func() bool {
		// Exactly one: the new config's server holds it (a wrong name
		// would read zero and fail below rather than wait for nothing).
		if caddy.ListenerUsage("tcp", testListener) != 1 {
			return false
		}
		n, known := listeningSockets(testPort)
		return !known || n == 1
	}
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		if released() {
			return
		}
	}
	n, _ := listeningSockets(testPort)
	t.Fatalf("the previous config still holds %s: Caddy counts %d listeners, the kernel %d sockets",
		testListener, caddy.ListenerUsage("tcp", testListener), n)
}

// listeningSockets counts the TCP sockets in the LISTEN state on port, from
// Linux's /proc/net/tcp and tcp6; known is false where they cannot be read.
func listeningSockets(port int) (n int, known bool) {
	suffix := fmt.Sprintf(":%04X", port)
	for _, table := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		b, err := os.ReadFile(table)
		if err != nil {
			continue
		}
		known = true
		for _, line := range strings.Split(string(b), "\n")[1:] {
			// sl local_address rem_address st ...; 0A is LISTEN.
			f := strings.Fields(line)
			if len(f) > 3 && strings.HasSuffix(f[1], suffix) && f[3] == "0A" {
				n++
			}
		}
	}
	return n, known
}

// adminRequest makes a request to the in-process Caddy's admin endpoint on
// a connection of its own, trying again while it fails to get an answer
// (see loadConfig); a repeated load is the same load.
func adminRequest(t *testing.T, method, path, contentType string, body []byte) (int, []byte) {
	t.Helper()
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 30 * time.Second}
	var lastErr error
	for range 50 {
		req, err := http.NewRequest(method, "http://localhost:2999"+path, bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		if contentType != "" {
			req.Header.Set("Content-Type", contentType)
		}
		res, err := client.Do(req)
		if err != nil {
			lastErr = err
			time.Sleep(20 * time.Millisecond)
			continue
		}
		b, err := io.ReadAll(res.Body)
		res.Body.Close()
		if err != nil {
			lastErr = err
			continue
		}
		return res.StatusCode, b
	}
	t.Fatalf("%s %s: %v", method, path, lastErr)
	return 0, nil
}

// received is one request as the test upstream saw it.
type received struct {
	Header http.Header
	Body   string
}

// testUpstream is the legacy backend: it records every request and answers
// as the request's X-Test-* headers ask, after X-Test-Delay if given.
type testUpstream struct {
	*httptest.Server
	mu  sync.Mutex
	got []received
	// onArrival, if set before the first request, runs as each request
	// has been read, before X-Test-Delay.
	onArrival func()
}

func newTestUpstream(t *testing.T) *testUpstream {
	u := &testUpstream{}
	u.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if u.onArrival != nil {
			u.onArrival()
		}
		if d, err := time.ParseDuration(r.Header.Get("X-Test-Delay")); err == nil {
			time.Sleep(d) // a slow backend, which goes on after its client left
		}
		u.mu.Lock()
		u.got = append(u.got, received{Header: r.Header.Clone(), Body: string(body)})
		u.mu.Unlock()
		for _, h := range []string{"Webhook-Last-Used", "Webhook-Next-Push-After"} {
			if v := r.Header.Get("X-Test-" + h); v != "" {
				w.Header().Set(h, v)
			}
		}
		if ct := r.Header.Get("X-Test-Content-Type"); ct != "" {
			w.Header().Set("Content-Type", ct)
		}
		status := 204
		fmt.Sscan(r.Header.Get("X-Test-Status"), &status)
		w.WriteHeader(status)
		io.WriteString(w, r.Header.Get("X-Test-Body"))
	}))
	t.Cleanup(u.Close)
	return u
}

func (u *testUpstream) requests() []received {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]received(nil), u.got...)
}

func (u *testUpstream) addr() string { return strings.TrimPrefix(u.URL, "http://") }

type pushResult struct {
	Status   int
	Header   http.Header
	Envelope ingest.Envelope
	Raw      string
}

func doPush(t *testing.T, tester *caddytest.Tester, method, path string, headers map[string]string, body string) pushResult {
	t.Helper()
	req, err := http.NewRequest(method, testBase+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	res, err := tester.Client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	raw, _ := io.ReadAll(res.Body)
	out := pushResult{Status: res.StatusCode, Header: res.Header, Raw: string(raw)}
	if err := json.Unmarshal(raw, &out.Envelope); err != nil {
		t.Fatalf("%s %s: answer is not a JSON envelope: %q", method, path, raw)
	}
	if ct := res.Header.Get("Content-Type"); ct != "application/json" {
		t.Fatalf("Content-Type = %q", ct)
	}
	return out
}

// assertEnvelopeHeaders checks the headers every ingest answer carries.
func assertEnvelopeHeaders(t *testing.T, name string, res pushResult) {
	t.Helper()
	if cl := res.Header.Get("Content-Length"); cl != strconv.Itoa(len(res.Raw)) {
		t.Errorf("%s: Content-Length %q for a %d-byte answer", name, cl, len(res.Raw))
	}
	if cc := res.Header.Get("Cache-Control"); cc != "no-store" {
		t.Errorf("%s: Cache-Control = %q, want no-store", name, cc)
	}
}

// assertNotInFile fails if any secret occurs in the file.
func assertNotInFile(t *testing.T, file string, secrets ...string) {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) == 0 {
		t.Fatalf("%s is empty: the log check would prove nothing", file)
	}
	for _, s := range secrets {
		if strings.Contains(string(b), s) {
			t.Errorf("secret %q appears in %s", s, file)
		}
	}
}

func readFile(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
