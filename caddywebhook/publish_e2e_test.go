package caddywebhook

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddytest"
	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"

	"github.com/hookgate/caddy-webhook/internal/testcompress"
)

const (
	e2eKinguinSecret = "e2e-kinguin-secret-51ab"
	e2eFlybuyToken   = "e2e-flybuy-token-9dd0"
)

var e2eSigningSecret = "whsec_" + base64.StdEncoding.EncodeToString([]byte("e2e-signing-key-0123456789abcdef"))

// subscriber is a receiving endpoint that records what arrives.
type subscriber struct {
	*httptest.Server
	mu   sync.Mutex
	hits []received
	fail atomic.Bool // answer 503 while set
}

func newSubscriber(t *testing.T) *subscriber {
	s := &subscriber{}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if s.fail.Load() {
			w.WriteHeader(503)
			return
		}
		s.mu.Lock()
		s.hits = append(s.hits, received{Header: r.Header.Clone(), Body: string(body)})
		s.mu.Unlock()
		w.WriteHeader(204)
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *subscriber) received() []received {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]received(nil), s.hits...)
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("timed out waiting for %s", what)
}

func publishConfig(t *testing.T, storage, kinguinURL, flybuyURL string) (string, string) {
	global, logFile := globalOptions(t, storage, fmt.Sprintf(`allow_private_targets
		retry 1s
		subscription kinguin {
			url %s
			events product.update
			secret_header X-Event-Secret {env.E2E_KINGUIN_SECRET}
			signing_secret %s
		}
		subscription flybuy {
			url %s
			events *
			token %s
			envelope data
		}`, kinguinURL, e2eSigningSecret, flybuyURL, e2eFlybuyToken))
	return global + `
http://localhost:9080 {
	handle /events {
		webhook_publish {
			max_body 1KB
		}
	}
}
`, logFile
}

func publish(t *testing.T, client *http.Client, method, body string) (int, string) {
	t.Helper()
	status, answer, _ := publishWith(t, client, method, body, nil)
	return status, answer
}

// publishWith sends a publish with extra headers and returns the answer's
// headers too.
func publishWith(t *testing.T, client *http.Client, method, body string, header http.Header) (int, string, http.Header) {
	t.Helper()
	req, _ := http.NewRequest(method, testBase+"/events", strings.NewReader(body))
	maps.Copy(req.Header, header)
	res, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	if ct := res.Header.Get("Content-Type"); ct != "application/json" {
		t.Fatalf("Content-Type %q", ct)
	}
	return res.StatusCode, strings.TrimSpace(string(b)), res.Header
}

func TestPublishEndToEnd(t *testing.T) {
	t.Setenv("E2E_KINGUIN_SECRET", e2eKinguinSecret)
	kinguin, flybuy := newSubscriber(t), newSubscriber(t)
	cfg, logFile := publishConfig(t, t.TempDir(), kinguin.URL+"/hook", flybuy.URL+"/hook")
	tester := startCaddy(t, cfg)

	payload := `{"kinguinId":1949,"qty":845,"updatedAt":"2020-10-16T11:24:08.015+00:00"}`
	status, body := publish(t, tester.Client, "POST", `{"event":"product.update","id":"p-1949","data":`+payload+`}`)
	if status != 202 || body != `{"id":"p-1949","deliveries":2}` {
		t.Fatalf("publish: %d %s", status, body)
	}
	waitFor(t, "both deliveries", func() bool { return len(kinguin.received()) == 1 && len(flybuy.received()) == 1 })

	k := kinguin.received()[0]
	if k.Body != payload || k.Header.Get("X-Event-Secret") != e2eKinguinSecret || k.Header.Get("X-Event-Name") != "product.update" ||
		k.Header.Get("Webhook-Id") != "p-1949" || k.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("kinguin got %s %v", k.Body, k.Header)
	}
	wh, _ := standardwebhooks.NewWebhook(e2eSigningSecret)
	if err := wh.Verify([]byte(k.Body), k.Header); err != nil {
		t.Fatalf("signature: %v", err)
	}
	f := flybuy.received()[0]
	if f.Body != `{"data":`+payload+`}` || f.Header.Get("Authorization") != `Token token="`+e2eFlybuyToken+`"` {
		t.Fatalf("flybuy got %s %v", f.Body, f.Header)
	}

	// The same id again: same answer, nothing new delivered.
	status, body = publish(t, tester.Client, "POST", `{"event":"product.update","id":"p-1949","data":`+payload+`}`)
	if status != 202 || body != `{"id":"p-1949","deliveries":2}` {
		t.Fatalf("republish: %d %s", status, body)
	}
	// An event only flybuy wants.
	status, body = publish(t, tester.Client, "POST", `{"event":"order.status","data":{"orderId":"PHS84FJAG5U"}}`)
	if status != 202 || !strings.HasPrefix(body, `{"id":"msg_`) || !strings.HasSuffix(body, `","deliveries":1}`) {
		t.Fatalf("second event: %d %s", status, body)
	}
	waitFor(t, "the order event", func() bool { return len(flybuy.received()) == 2 })
	time.Sleep(100 * time.Millisecond)
	if len(kinguin.received()) != 1 {
		t.Fatalf("kinguin got %d deliveries, want 1", len(kinguin.received()))
	}

	bad := []struct {
		method, body string
		status       int
		err          string
	}{
		{"GET", "", 405, "method not allowed"},
		{"POST", `{"event":"x","data":{}`, 400, "invalid JSON: unexpected end of input"},
		{"POST", `{"data":{}}`, 400, "event is required"},
		{"POST", `{"event":"x","data":"text"}`, 400, "data must be a JSON object or array"},
		{"POST", `{"event":"x","data":{"a":"` + strings.Repeat("x", 1100) + `"}}`, 413, "request body too large"},
		{"POST", `{"event":"product.update","id":"p-1949","data":{"sku":"other"}}`, 409, "id was already published with a different event, location or data"},
	}
	for _, b := range bad {
		status, body := publish(t, tester.Client, b.method, b.body)
		if status != b.status || body != fmt.Sprintf(`{"error":%q}`, b.err) {
			t.Errorf("%s %.40s: got %d %s, want %d %q", b.method, b.body, status, body, b.status, b.err)
		}
	}
	// A compressed publish is decoded; max_body bounds it decoded too.
	gz := http.Header{"Content-Encoding": {"gzip"}}
	status, body, _ = publishWith(t, tester.Client, "POST", testcompress.Encode(t, "gzip", `{"event":"order.status","data":{"orderId":"GZ1"}}`), gz)
	if status != 202 || !strings.HasSuffix(body, `","deliveries":1}`) {
		t.Fatalf("gzipped publish: %d %s", status, body)
	}
	waitFor(t, "the gzipped event", func() bool { return len(flybuy.received()) == 3 })
	if got := flybuy.received()[2].Body; got != `{"data":{"orderId":"GZ1"}}` {
		t.Fatalf("gzipped publish delivered as %q", got)
	}
	bomb := testcompress.Encode(t, "gzip", `{"event":"x","data":{"a":"`+strings.Repeat("x", 10<<10)+`"}}`)
	if status, body, _ := publishWith(t, tester.Client, "POST", bomb, gz); len(bomb) > 1000 || status != 413 || body != `{"error":"request body too large"}` {
		t.Errorf("%d gzipped bytes decoding past max_body: %d %s", len(bomb), status, body)
	}
	status, body, hdr := publishWith(t, tester.Client, "POST", `{"event":"x","data":{}}`, http.Header{"Content-Encoding": {"br"}})
	if status != 415 || body != `{"error":"unsupported content encoding"}` || hdr.Get("Accept-Encoding") != "gzip, deflate" {
		t.Errorf("br publish: %d %s, Accept-Encoding %q", status, body, hdr.Get("Accept-Encoding"))
	}
	time.Sleep(100 * time.Millisecond)
	if n := len(flybuy.received()); n != 3 {
		t.Fatalf("a refused publish was delivered (%d deliveries)", n)
	}
	assertNotInFile(t, logFile, e2eKinguinSecret, e2eFlybuyToken, strings.TrimPrefix(e2eSigningSecret, "whsec_"))
}

// With the guard on (no allow_private_targets), a subscription on loopback
// is never reached.
func TestPublishRefusesPrivateTargets(t *testing.T) {
	sub := newSubscriber(t)
	global, logFile := globalOptions(t, t.TempDir(), fmt.Sprintf(`subscription local {
			url %s
			events *
		}`, sub.URL))
	tester := startCaddy(t, global+`
http://localhost:9080 {
	webhook_publish
}`)
	req, _ := http.NewRequest("POST", testBase+"/", strings.NewReader(`{"event":"x","data":{}}`))
	res, err := tester.Client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != 202 {
		t.Fatalf("publish: %d", res.StatusCode)
	}
	waitFor(t, "the refused attempt in the log", func() bool {
		return strings.Contains(readFile(t, logFile), "private or reserved address")
	})
	if n := len(sub.received()); n != 0 {
		t.Fatalf("loopback subscriber got %d requests", n)
	}
}

func TestEncryptionAtRestThroughCaddy(t *testing.T) {
	t.Setenv("E2E_WEBHOOK_KEY", base64.StdEncoding.EncodeToString([]byte("0123456789abcdef0123456789abcdef")))
	sub := newSubscriber(t)
	storage := t.TempDir()
	const token = "e2e-encrypted-token-7f3e"
	global, logFile := globalOptions(t, storage, fmt.Sprintf(`encryption_key {env.E2E_WEBHOOK_KEY}
		allow_private_targets
		subscription s {
			url %s
			events *
			token %s
		}`, sub.URL, token))
	cfg := global + "\nhttp://localhost:9080 {\n\twebhook_publish\n}\n"
	tester := startCaddy(t, cfg)
	req, _ := http.NewRequest("POST", testBase+"/", strings.NewReader(`{"event":"e","data":{"card":"4111-needle-1111"}}`))
	res, err := tester.Client.Do(req)
	if err != nil || res.StatusCode != 202 {
		t.Fatalf("publish: %v %v", res, err)
	}
	res.Body.Close()
	waitFor(t, "the delivery", func() bool { return len(sub.received()) >= 1 })
	if log := readFile(t, logFile); !strings.Contains(log, `"sync_writes":false,"encrypted":true`) {
		t.Fatalf("the store's log line does not say it is encrypted:\n%s", log)
	}

	// A reload may not change the key of the open database.
	t.Setenv("E2E_OTHER_KEY", base64.StdEncoding.EncodeToString([]byte("fedcba9876543210fedcba9876543210")))
	changed := strings.Replace(cfg, "{env.E2E_WEBHOOK_KEY}", "{env.E2E_OTHER_KEY}", 1)
	status, b := adminRequest(t, "POST", "/load", "text/caddyfile", []byte(changed))
	if status == 200 || !strings.Contains(string(b), "encryption_key differs") {
		t.Fatalf("key change on reload: %d %s", status, b)
	}

	loadConfig(t, emptyConfig) // closes the database
	for _, secret := range []string{token, "4111-needle-1111"} {
		if dirHas(t, storage, secret) {
			t.Errorf("%q is readable in the data directory", secret)
		}
	}

	// A start with a new key, the old one after it, moves the store to
	// the new key; from then on the new key alone opens it, the old one
	// no longer.
	publish := func(n int) {
		t.Helper()
		res, err := tester.Client.Post(testBase+"/", "application/json", strings.NewReader(`{"event":"e","data":{}}`))
		if err != nil || res.StatusCode != 202 {
			t.Fatalf("publish: %v %v", res, err)
		}
		res.Body.Close()
		waitFor(t, "the delivery", func() bool { return len(sub.received()) >= n })
	}
	loadConfig(t, strings.Replace(cfg, "{env.E2E_WEBHOOK_KEY}", "{env.E2E_OTHER_KEY} {env.E2E_WEBHOOK_KEY}", 1))
	publish(2)
	if log := readFile(t, logFile); !strings.Contains(log, `"msg":"re-keyed the store`) {
		t.Fatalf("no re-key logged:\n%s", log)
	}
	loadConfig(t, emptyConfig)
	loadConfig(t, changed)
	publish(3)
	loadConfig(t, emptyConfig)
	status, b = adminRequest(t, "POST", "/load", "text/caddyfile", []byte(cfg))
	if status == 200 || !strings.Contains(string(b), "encryption_key does not match") {
		t.Fatalf("the old key after the re-key: %d %s", status, b)
	}
	log := readFile(t, logFile)
	for _, env := range []string{"E2E_WEBHOOK_KEY", "E2E_OTHER_KEY"} {
		if strings.Contains(log, os.Getenv(env)) {
			t.Errorf("the log holds the key in %s", env)
		}
	}
}

// sync_writes reaches badger, and like the key it is fixed while the
// database is open: a reload that changes it is refused and the running
// config goes on.
func TestSyncWritesThroughCaddy(t *testing.T) {
	storage := t.TempDir()
	publishTo := func(cfg string) string { return cfg + "\nhttp://localhost:9080 {\n\twebhook_publish\n}\n" }
	synced, logFile := globalOptions(t, storage, "sync_writes")
	unsynced, _ := globalOptions(t, storage, "")
	publish := func(tester *caddytest.Tester) {
		t.Helper()
		res, err := tester.Client.Post(testBase+"/", "application/json", strings.NewReader(`{"event":"e","data":{}}`))
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if res.StatusCode != 202 {
			t.Fatalf("publish: %d", res.StatusCode)
		}
	}
	syncWrites := func() bool {
		o := current.Load()
		if o == nil {
			t.Fatal("no open database")
		}
		return o.db.Opts().SyncWrites
	}

	tester := startCaddy(t, publishTo(synced))
	publish(tester)
	if !syncWrites() {
		t.Fatal("sync_writes: badger opened without SyncWrites")
	}
	if log := readFile(t, logFile); !strings.Contains(log, `"msg":"webhook store ready"`) || !strings.Contains(log, `"sync_writes":true,"encrypted":false`) {
		t.Fatalf("the store's log line does not say it syncs:\n%s", log)
	}
	status, b := adminRequest(t, "POST", "/load", "text/caddyfile", []byte(publishTo(unsynced)))
	if status == 200 || !strings.Contains(string(b), "sync_writes differs from what the open database uses (true); it can only change with a restart") {
		t.Fatalf("sync_writes change on reload: %d %s", status, b)
	}
	publish(tester)
	if !syncWrites() {
		t.Fatal("the refused reload changed the open database")
	}

	loadConfig(t, emptyConfig) // closes the database, as a restart would
	loadConfig(t, publishTo(unsynced))
	publish(tester)
	if syncWrites() {
		t.Fatal("without sync_writes: badger opened with SyncWrites")
	}
}

func dirHas(t *testing.T, dir, s string) bool {
	t.Helper()
	found := false
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			b, _ := os.ReadFile(p)
			found = found || strings.Contains(string(b), s)
		}
		return nil
	})
	return found
}

// Across a reload the old and new config share one engine: a backlog
// pending at the reload is delivered once, new settings and subscriptions
// apply, and nothing is delivered twice by two sets of workers.
func TestDeliveryAcrossReload(t *testing.T) {
	a, b := newSubscriber(t), newSubscriber(t)
	a.fail.Store(true) // hold a backlog across the reload
	storage := t.TempDir()
	cfg := func(extra string) string {
		global, _ := globalOptions(t, storage, fmt.Sprintf(`allow_private_targets
		retry 200ms 200ms 200ms 200ms 200ms 200ms 200ms 200ms 200ms 200ms
		%s
		subscription a {
			url %s
			events *
		}`, extra, a.URL))
		return global + "\nhttp://localhost:9080 {\n\twebhook_publish\n}\n"
	}
	tester := startCaddy(t, cfg(""))
	send := func(id string) {
		req, _ := http.NewRequest("POST", testBase+"/", strings.NewReader(`{"event":"e","id":"`+id+`","data":{}}`))
		res, err := tester.Client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if res.StatusCode != 202 {
			t.Fatalf("publish %s: %d", id, res.StatusCode)
		}
	}
	for i := 0; i < 20; i++ {
		send(fmt.Sprint("before-", i))
	}
	loadConfig(t, cfg(fmt.Sprintf("workers 4\n\t\tsubscription b {\n\t\t\turl %s\n\t\t\tevents *\n\t\t}", b.URL)))
	a.fail.Store(false)
	for i := 0; i < 5; i++ {
		send(fmt.Sprint("after-", i))
	}
	waitFor(t, "all deliveries", func() bool { return len(a.received()) >= 25 && len(b.received()) >= 5 })
	time.Sleep(500 * time.Millisecond) // would anything arrive twice?
	seen := map[string]int{}
	for _, r := range a.received() {
		seen[r.Header.Get("Webhook-Id")]++
	}
	for id, n := range seen {
		if n != 1 {
			t.Errorf("%s delivered %d times to a", id, n)
		}
	}
	if len(seen) != 25 || len(b.received()) != 5 {
		t.Fatalf("a got %d distinct, b got %d", len(seen), len(b.received()))
	}
}

// A reload that moves storage_dir warns that what the old directory
// holds stays behind; a reload that keeps it says nothing of the kind.
func TestStorageDirChangeIsWarned(t *testing.T) {
	down := newSubscriber(t)
	down.fail.Store(true) // the deliveries stay queued
	first, second := t.TempDir(), t.TempDir()
	cfg := func(storage string) (string, string) {
		global, logFile := globalOptions(t, storage, fmt.Sprintf(`allow_private_targets
		retry 1h
		subscription down {
			url %s
			events *
		}`, down.URL))
		return global + "\nhttp://localhost:9080 {\n\twebhook_publish\n}\n", logFile
	}
	firstCfg, _ := cfg(first)
	tester := startCaddy(t, firstCfg)
	for range 3 {
		if st, body := publish(t, tester.Client, "POST", `{"event":"e","data":{}}`); st != 202 {
			t.Fatalf("publish: %d %s", st, body)
		}
	}

	sameCfg, sameLog := cfg(first)
	loadConfig(t, sameCfg)
	movedCfg, movedLog := cfg(second)
	loadConfig(t, movedCfg)
	if strings.Contains(readFile(t, sameLog), "storage_dir changed") {
		t.Fatal("a reload that kept storage_dir warned that it changed")
	}
	var warning map[string]any
	for _, line := range strings.Split(readFile(t, movedLog), "\n") {
		if strings.Contains(line, "storage_dir changed") {
			if err := json.Unmarshal([]byte(line), &warning); err != nil {
				t.Fatal(err)
			}
		}
	}
	if warning["level"] != "warn" || warning["previous_dir"] != first || warning["dir"] != second || warning["queued_there"] != float64(3) {
		t.Fatalf("warning: %v", warning)
	}
}

// A reload that fails after the webhooks app of the new config started
// (here: the HTTP app cannot listen) is rolled back, and the engine goes
// back to the old config's subscriptions and settings.
func TestFailedReloadRestoresEngine(t *testing.T) {
	a, b := newSubscriber(t), newSubscriber(t)
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	storage := t.TempDir()
	cfg := func(sub, url, extraSite string) string {
		global, _ := globalOptions(t, storage, fmt.Sprintf("allow_private_targets\n\t\tsubscription %s {\n\t\t\turl %s\n\t\t\tevents *\n\t\t}", sub, url))
		return global + "\nhttp://localhost:9080 {\n\twebhook_publish\n}\n" + extraSite
	}
	tester := startCaddy(t, cfg("a", a.URL, ""))
	bad := cfg("b", b.URL, fmt.Sprintf("http://%s {\n\trespond 200\n}\n", busy.Addr()))
	// Apps start in map order: repeat so that the webhooks app of the bad
	// config starts before the HTTP app fails in (almost) every run.
	for i := 0; i < 8; i++ {
		if status, _ := adminRequest(t, "POST", "/load", "text/caddyfile", []byte(bad)); status == 200 {
			t.Fatal("the bad config loaded")
		}
	}
	req, _ := http.NewRequest("POST", testBase+"/", strings.NewReader(`{"event":"e","data":{}}`))
	res, err := tester.Client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != 202 || !strings.Contains(string(body), `"deliveries":1`) {
		t.Fatalf("publish after the failed reloads: %d %s", res.StatusCode, body)
	}
	waitFor(t, "the delivery to a", func() bool { return len(a.received()) == 1 })
	time.Sleep(200 * time.Millisecond)
	if n := len(b.received()); n != 0 {
		t.Fatalf("the rolled-back config's subscription got %d deliveries", n)
	}
}

// When the last config using the store goes, a delivery attempt in flight
// is let end and recorded: the store opening again does not send it twice.
func TestDeliveryInFlightEndsBeforeStoreCloses(t *testing.T) {
	t.Setenv("E2E_KINGUIN_SECRET", e2eKinguinSecret)
	var mu sync.Mutex
	var events []string
	arrived := make(chan struct{}, 1)
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		events = append(events, r.Header.Get("X-Event-Name"))
		first := len(events) == 1
		mu.Unlock()
		if first {
			arrived <- struct{}{}
			time.Sleep(300 * time.Millisecond)
		}
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(slow.Close)
	got := func() []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), events...)
	}
	// Only flybuy (events *) is reachable; kinguin wants no event sent here.
	cfg, _ := publishConfig(t, t.TempDir(), slow.URL+"/kinguin", slow.URL+"/flybuy")
	tester := startCaddy(t, cfg)
	if st, body := publish(t, tester.Client, "POST", `{"event":"order.status","data":{"n":1}}`); st != 202 {
		t.Fatalf("publish: %d %s", st, body)
	}
	<-arrived
	loadConfig(t, emptyConfig) // returns once the store has closed

	loadConfig(t, cfg)
	if st, body := publish(t, tester.Client, "POST", `{"event":"order.shipped","data":{"n":2}}`); st != 202 {
		t.Fatalf("publish after the store reopened: %d %s", st, body)
	}
	waitFor(t, "the second event", func() bool { return slices.Contains(got(), "order.shipped") })
	time.Sleep(200 * time.Millisecond) // a redelivery would start with the engine, before the new event
	if e := got(); len(e) != 2 {
		t.Fatalf("the subscriber got %v: the attempt in flight at the close was made again", e)
	}
}
