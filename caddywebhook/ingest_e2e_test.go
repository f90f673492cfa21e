package caddywebhook

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddytest"

	"github.com/hookgate/caddy-webhook/ingest"
	"github.com/hookgate/caddy-webhook/internal/testcompress"
)

const (
	e2eAccessKey  = "e2e-access-key-3f9c"
	e2eRotatedKey = "e2e-rotated-key-77aa"
	e2eAliceKey   = "e2e-alice-key-0b1d"
	e2eBobKey     = "e2e-bob-key-c4e2"
	e2eBobOldKey  = "e2e-bob-old-key-9d31"
)

// ingestConfig lists reverse_proxy before webhook_ingest on purpose: the
// registered directive order must put webhook_ingest first anyway.
// ingestConfig is a site with webhook_ingest in front of upstream; it sets
// the environment variables the config takes its keys from.
func ingestConfig(t *testing.T, storageDir, upstream string) (string, string) {
	t.Setenv("E2E_ACCESS_KEY", e2eAccessKey)
	t.Setenv("E2E_ALICE_KEY", e2eAliceKey)
	global, logFile := globalOptions(t, storageDir, "")
	return global + fmt.Sprintf(`
http://localhost:9080 {
	# Caddy redacts Authorization in access logs by itself; the client
	# key header needs the filter encoder (the README's recipe).
	log {
		output file %s.access
		format filter {
			request>headers>X-Webhook-Token delete
		}
	}
	handle /api/v1/webhook {
		reverse_proxy %s
		webhook_ingest {
			access_key {env.E2E_ACCESS_KEY} %s
			client alice {env.E2E_ALICE_KEY} interval 1h
			client bob %s previous %s
			max_body 1KB
		}
	}
}
`, logFile, upstream, e2eRotatedKey, e2eBobKey, e2eBobOldKey), logFile
}

// startIngest runs ingestConfig in front of a fresh test upstream.
func startIngest(t *testing.T) (up *testUpstream, tester *caddytest.Tester, logFile string) {
	up = newTestUpstream(t)
	cfg, logFile := ingestConfig(t, t.TempDir(), up.addr())
	return up, startCaddy(t, cfg), logFile
}

func authHeaders(access, token string) map[string]string {
	h := map[string]string{"Content-Type": "application/json"}
	if access != "" {
		h["Authorization"] = "Token " + access
	}
	if token != "" {
		h["X-Webhook-Token"] = token
	}
	return h
}

func with(h map[string]string, kv ...string) map[string]string {
	for i := 0; i+1 < len(kv); i += 2 {
		h[kv[i]] = kv[i+1]
	}
	return h
}

func TestIngestEndToEnd(t *testing.T) {
	up, tester, logFile := startIngest(t)
	const path = "/api/v1/webhook"

	rows := []struct {
		name    string
		method  string
		headers map[string]string
		body    string
		status  int
		msg     string
	}{
		{"GET", "GET", authHeaders(e2eAccessKey, e2eAliceKey), "", 405, "method not allowed"},
		{"no Authorization", "POST", authHeaders("", e2eAliceKey), "{}", 403, "not authorized"},
		{"wrong access key", "POST", authHeaders("wrong", e2eAliceKey), "{}", 403, "not authorized"},
		{"no X-Webhook-Token", "POST", authHeaders(e2eAccessKey, ""), "{}", 400, "must supply webhook token in X-Webhook-Token header"},
		{"unknown client key", "POST", authHeaders(e2eAccessKey, "who-knows"), "{}", 403, "unknown webhook token"},
		{"body too large", "POST", authHeaders(e2eAccessKey, e2eBobKey), `{"a":"` + strings.Repeat("x", 1000) + `"}`, 413, "request body too large"},
		{"body not an object", "POST", authHeaders(e2eAccessKey, e2eBobKey), `["menu"]`, 400, "request body must be a JSON object"},
		{"body in brotli", "POST", with(authHeaders(e2eAccessKey, e2eBobKey), "Content-Encoding", "br"), "{}", 415, "unsupported content encoding"},
		{"upstream 4xx", "POST", with(authHeaders(e2eAccessKey, e2eBobKey), "X-Test-Status", "422", "X-Test-Body", `{"error":"menu has no items"}`), "{}", 422, "menu has no items"},
		{"upstream 5xx", "POST", with(authHeaders(e2eAccessKey, e2eBobKey), "X-Test-Status", "500", "X-Test-Body", "stack trace at 10.1.2.3"), "{}", 502, "upstream error: upstream answered 500 Internal Server Error"},
	}
	for _, row := range rows {
		res := doPush(t, tester, row.method, path, row.headers, row.body)
		if res.Status != row.status || res.Envelope.Error != row.msg || res.Envelope.Success {
			t.Errorf("%s: got %d %s, want %d %q", row.name, res.Status, res.Raw, row.status, row.msg)
		}
		if row.status == 405 && res.Header.Get("Allow") != "POST" {
			t.Errorf("%s: Allow = %q", row.name, res.Header.Get("Allow"))
		}
		if row.status == 415 && res.Header.Get("Accept-Encoding") != "gzip, deflate" {
			t.Errorf("%s: Accept-Encoding = %q", row.name, res.Header.Get("Accept-Encoding"))
		}
		assertEnvelopeHeaders(t, row.name, res)
	}
	if n := len(up.requests()); n != 2 {
		t.Fatalf("upstream saw %d requests, want only the 4xx and 5xx rows", n)
	}

	// Accepted, with the rotated key: the upstream sees the body unchanged
	// and the client's name instead of the keys.
	body := "{ \"menu\": [ {\"sku\": \"A1\", \"price\": 1.5} ] }\n"
	res := doPush(t, tester, "POST", path, authHeaders(e2eRotatedKey, e2eAliceKey), body)
	if res.Status != 200 || !res.Envelope.Success || res.Envelope.Error != "" {
		t.Fatalf("accepted push: %d %s", res.Status, res.Raw)
	}
	assertEnvelopeHeaders(t, "accepted push", res)
	last, err1 := time.Parse(time.RFC3339, res.Envelope.LastUsed)
	next, err2 := time.Parse(time.RFC3339, res.Envelope.NextPushAfter)
	if err1 != nil || err2 != nil || next.Sub(last) != time.Hour || time.Since(last) > time.Minute {
		t.Fatalf("times: %+v", res.Envelope)
	}
	got := up.requests()[2]
	if got.Body != body || got.Header.Get("X-Webhook-Client") != "alice" || got.Header.Get("Authorization") != "" || got.Header.Get("X-Webhook-Token") != "" {
		t.Fatalf("upstream got %q with headers %v", got.Body, got.Header)
	}

	// Inside the window: refused before reaching the upstream.
	res = doPush(t, tester, "POST", path, authHeaders(e2eAccessKey, e2eAliceKey), "{}")
	want := "next push not allowed until after " + res.Envelope.NextPushAfter
	if res.Status != 400 || res.Envelope.Error != want || res.Envelope.NextPushAfter != next.UTC().Format(time.RFC3339) {
		t.Fatalf("inside window: %d %s", res.Status, res.Raw)
	}
	if n := len(up.requests()); n != 3 {
		t.Fatalf("a refused push reached the upstream (%d requests)", n)
	}

	// A gzipped body is checked decoded and goes upstream as it came.
	gz := testcompress.Encode(t, "gzip", body)
	res = doPush(t, tester, "POST", path, with(authHeaders(e2eAccessKey, e2eBobKey), "Content-Encoding", "gzip"), gz)
	if res.Status != 200 {
		t.Fatalf("gzipped push: %d %s", res.Status, res.Raw)
	}
	if got := up.requests()[3]; got.Body != gz || got.Header.Get("Content-Encoding") != "gzip" {
		t.Fatalf("upstream got the gzipped push as %q, Content-Encoding %q", got.Body, got.Header.Get("Content-Encoding"))
	}

	// bob's previous key still pushes as bob while the key is rotated, and
	// the log says which pushes still use it.
	res = doPush(t, tester, "POST", path, authHeaders(e2eAccessKey, e2eBobOldKey), "{}")
	if got := up.requests()[4]; res.Status != 200 || got.Header.Get("X-Webhook-Client") != "bob" {
		t.Fatalf("push by a previous key: %d %s, upstream saw client %q", res.Status, res.Raw, got.Header.Get("X-Webhook-Client"))
	}
	if n := strings.Count(readFile(t, logFile), `"previous_key":true`); n != 1 {
		t.Fatalf("%d log lines mark a push by a previous key, want 1", n)
	}

	// bob has no window; the upstream moves it with its override headers,
	// which the client never sees.
	res = doPush(t, tester, "POST", path, with(authHeaders(e2eAccessKey, e2eBobKey),
		"X-Test-Webhook-Next-Push-After", "2030-01-01T00:00:00Z", "X-Test-Status", "202"), "{}")
	if res.Status != 200 || res.Envelope.NextPushAfter != "2030-01-01T00:00:00Z" || res.Header.Get("Webhook-Next-Push-After") != "" {
		t.Fatalf("override: %d %s %v", res.Status, res.Raw, res.Header)
	}
	res = doPush(t, tester, "POST", path, authHeaders(e2eAccessKey, e2eBobKey), "{}")
	if res.Status != 400 || res.Envelope.Error != "next push not allowed until after 2030-01-01T00:00:00Z" {
		t.Fatalf("after override: %d %s", res.Status, res.Raw)
	}

	// No key reaches a log line, the access log included.
	secrets := []string{e2eAccessKey, e2eRotatedKey, e2eAliceKey, e2eBobKey, e2eBobOldKey}
	assertNotInFile(t, logFile, secrets...)
	assertNotInFile(t, logFile+".access", secrets...)
	logs := readFile(t, logFile)
	if !strings.Contains(logs, `"outcome":"accepted"`) || !strings.Contains(logs, `"client":"alice"`) || !strings.Contains(logs, `"upstream_status":422`) {
		t.Errorf("log lacks the push fields:\n%s", logs)
	}
}

func TestIngestUpstreamUnreachable(t *testing.T) {
	up := newTestUpstream(t)
	addr := up.addr()
	up.Close() // nothing listens there any more
	cfg, _ := ingestConfig(t, t.TempDir(), addr)
	tester := startCaddy(t, cfg)

	res := doPush(t, tester, "POST", "/api/v1/webhook", authHeaders(e2eAccessKey, e2eAliceKey), "{}")
	if res.Status != 502 || res.Envelope.Error != "upstream error: no response from upstream" || res.Envelope.Success {
		t.Fatalf("unreachable: %d %s", res.Status, res.Raw)
	}
	if strings.Contains(res.Raw, strings.Split(addr, ":")[1]) {
		t.Fatalf("answer reveals the upstream address: %s", res.Raw)
	}
	// The failed push left the window open.
	res = doPush(t, tester, "POST", "/api/v1/webhook", authHeaders(e2eAccessKey, e2eAliceKey), "{}")
	if res.Status != 502 {
		t.Fatalf("retry: %d %s", res.Status, res.Raw)
	}
}

func TestIngestConcurrentPushesOneClient(t *testing.T) {
	up, tester, _ := startIngest(t)

	const n = 24
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		statuses = map[int]int{}
		start    = make(chan struct{})
	)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			req, _ := http.NewRequest("POST", testBase+"/api/v1/webhook", strings.NewReader(`{"n":1}`))
			for k, v := range authHeaders(e2eAccessKey, e2eAliceKey) {
				req.Header.Set(k, v)
			}
			res, err := tester.Client.Do(req)
			if err != nil {
				t.Error(err)
				return
			}
			var env ingest.Envelope
			json.NewDecoder(res.Body).Decode(&env)
			res.Body.Close()
			mu.Lock()
			statuses[res.StatusCode]++
			mu.Unlock()
		}()
	}
	close(start)
	wg.Wait()
	if statuses[200] != 1 || statuses[400]+statuses[409] != n-1 {
		t.Fatalf("statuses %v, want exactly one 200 and the rest 400/409", statuses)
	}
	if got := len(up.requests()); got != 1 {
		t.Fatalf("upstream got %d pushes, want 1", got)
	}
}

// The store is shared across reloads (the new config is provisioned while
// the old one still holds badger's directory lock) and survives the app
// being stopped and started again; a reload that shortens an interval
// shortens the windows running under it.
func TestIngestSurvivesReloadAndRestart(t *testing.T) {
	up := newTestUpstream(t)
	dir := t.TempDir()
	cfg, _ := ingestConfig(t, dir, up.addr())
	tester := startCaddy(t, cfg)
	res := doPush(t, tester, "POST", "/api/v1/webhook", authHeaders(e2eAccessKey, e2eAliceKey), "{}")
	if res.Status != 200 {
		t.Fatalf("first push: %d %s", res.Status, res.Raw)
	}
	tooEarly := "next push not allowed until after " + res.Envelope.NextPushAfter
	if res := doPush(t, tester, "POST", "/api/v1/webhook", authHeaders(e2eAccessKey, e2eBobKey), "{}"); res.Status != 200 {
		t.Fatalf("bob's push: %d %s", res.Status, res.Raw)
	}

	// Reload with a changed config while the first one is running.
	loadConfig(t, strings.Replace(cfg, "max_body 1KB", "max_body 2KB", 1))
	res = doPush(t, tester, "POST", "/api/v1/webhook", authHeaders(e2eAccessKey, e2eAliceKey), "{}")
	if res.Status != 400 || res.Envelope.Error != tooEarly {
		t.Fatalf("after reload: %d %s", res.Status, res.Raw)
	}

	// A config without the plugin stops the app and closes the database...
	loadConfig(t, emptyConfig)
	// ...and bringing it back reopens it from disk.
	loadConfig(t, cfg)
	res = doPush(t, tester, "POST", "/api/v1/webhook", authHeaders(e2eAccessKey, e2eAliceKey), "{}")
	if res.Status != 400 || res.Envelope.Error != tooEarly {
		t.Fatalf("after restart: %d %s", res.Status, res.Raw)
	}

	// A reload that shortens the interval shortens the running window (the
	// interval that set it was stored with it); interval 0 lets alice in.
	// The same reload drops bob from the config.
	withoutBob := strings.Replace(cfg, "client bob "+e2eBobKey+" previous "+e2eBobOldKey+"\n", "", 1)
	if withoutBob == cfg {
		t.Fatal("no client bob line to drop")
	}
	loadConfig(t, strings.Replace(withoutBob, "interval 1h", "interval 30m", 1))
	res = doPush(t, tester, "POST", "/api/v1/webhook", authHeaders(e2eAccessKey, e2eAliceKey), "{}")
	lastUsed, err := time.Parse(time.RFC3339, res.Envelope.LastUsed)
	if err != nil || res.Status != 400 || res.Envelope.NextPushAfter != ingest.FormatTime(lastUsed.Add(30*time.Minute)) {
		t.Fatalf("interval shortened to 30m: %d %s", res.Status, res.Raw)
	}
	// The admin API shows the windows as the running config enforces
	// them, and bob's as one no handler uses any more.
	_, body := admin(t, "GET", "/webhooks/windows")
	alice := windowJSON{Client: "alice", LastUsed: res.Envelope.LastUsed, NextPushAfter: res.Envelope.NextPushAfter, Interval: "30m0s", Configured: true}
	var shown []windowJSON
	if err := json.Unmarshal([]byte(body), &shown); err != nil || len(shown) != 2 || shown[0] != alice ||
		shown[1].Client != "bob" || shown[1].Configured {
		t.Fatalf("windows after the reload: %s, want alice as %+v and bob unconfigured", body, alice)
	}
	loadConfig(t, strings.Replace(cfg, "interval 1h", "interval 0", 1))
	res = doPush(t, tester, "POST", "/api/v1/webhook", authHeaders(e2eAccessKey, e2eAliceKey), "{}")
	if res.Status != 200 {
		t.Fatalf("interval turned off: %d %s", res.Status, res.Raw)
	}
}

// A staging and a production endpoint on one Caddy name their client alike
// with different keys: without a scope of its own, staging's pushes would
// use up production's windows. The handler that shares a window under a
// different key is pointed out in the log.
func TestIngestScopesKeepEndpointsApart(t *testing.T) {
	const prodKey, stagingKey, otherKey = "e2e-prod-key-91ab", "e2e-staging-key-5c0d", "e2e-other-key-ee17"
	up := newTestUpstream(t)
	global, logFile := globalOptions(t, t.TempDir(), "")
	site := func(path, scope, key string) string {
		return fmt.Sprintf(`
	handle %s {
		webhook_ingest {
			%s
			access_key %s
			client acme %s interval 1h
		}
		reverse_proxy %s
	}`, path, scope, e2eAccessKey, key, up.addr())
	}
	tester := startCaddy(t, global+"http://localhost:9080 {"+
		site("/prod", "", prodKey)+
		site("/staging", "scope staging", stagingKey)+
		site("/other", "", otherKey)+"\n}\n")

	push := func(path, key string) pushResult {
		return doPush(t, tester, "POST", path, authHeaders(e2eAccessKey, key), "{}")
	}
	if res := push("/prod", prodKey); res.Status != 200 {
		t.Fatalf("prod: %d %s", res.Status, res.Raw)
	}
	if res := push("/staging", stagingKey); res.Status != 200 {
		t.Fatalf("staging after a prod push: %d %s", res.Status, res.Raw)
	}
	if res := push("/other", otherKey); res.Status != 400 || !strings.HasPrefix(res.Envelope.Error, "next push not allowed") {
		t.Fatalf("same scope and name as prod: %d %s", res.Status, res.Raw)
	}

	log := readFile(t, logFile)
	warned := 0
	for _, line := range strings.Split(log, "\n") {
		if strings.Contains(line, "share its push window") {
			warned++
			if !strings.Contains(line, `"client":"acme"`) || !strings.Contains(line, `"scope":""`) {
				t.Errorf("warning without the client and scope: %s", line)
			}
		}
	}
	if warned != 1 {
		t.Fatalf("want one warning (for /other), got %d:\n%s", warned, log)
	}
	// The push lines of a scoped handler say which scope.
	if !strings.Contains(log, `"msg":"webhook push","scope":"staging","client":"acme","outcome":"accepted"`) {
		t.Errorf("no push line with the scope:\n%s", log)
	}
	assertNotInFile(t, logFile, prodKey, stagingKey, otherKey, e2eAccessKey)
}

// With a finite grace_period (1ns in these tests) Caddy cleans up the
// webhooks app while a push's handler still runs: the store waits for
// the push to save its window before it closes, so the window the client
// was told about is on disk when the store opens again.
func TestPushInFlightSettlesBeforeStoreCloses(t *testing.T) {
	up := newTestUpstream(t)
	cfg, logFile := ingestConfig(t, t.TempDir(), up.addr())
	tester := startCaddy(t, cfg)
	arrived := make(chan struct{}, 1)
	up.onArrival = func() { arrived <- struct{}{} }
	done := make(chan pushResult)
	go func() {
		done <- doPush(t, tester, "POST", "/api/v1/webhook", with(authHeaders(e2eAccessKey, e2eAliceKey), "X-Test-Delay", "500ms"), "{}")
	}()
	<-arrived
	loadConfig(t, emptyConfig) // the last config using the store goes
	res := <-done
	if res.Status != 200 {
		t.Fatalf("the push in flight: %d %s", res.Status, res.Raw)
	}
	if logs := readFile(t, logFile); strings.Contains(logs, "saving push window") {
		t.Fatalf("the push could not save its window:\n%s", logs)
	}

	loadConfig(t, cfg)
	again := doPush(t, tester, "POST", "/api/v1/webhook", authHeaders(e2eAccessKey, e2eAliceKey), "{}")
	if again.Status != 400 || again.Envelope.NextPushAfter != res.Envelope.NextPushAfter {
		t.Fatalf("after the store reopened: %d %s, want the window %s", again.Status, again.Raw, res.Envelope.NextPushAfter)
	}
}
