package api

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hookgate/caddy-webhook/delivery"
	"github.com/hookgate/caddy-webhook/internal/store"
	"github.com/hookgate/caddy-webhook/internal/testcompress"
)

// receiver records what it gets and answers with status (default 204).
type receiver struct {
	*httptest.Server
	mu     sync.Mutex
	hits   []*http.Request
	bodies []string
	status int
	delay  time.Duration
	hold   func() // when set, the next request calls it before answering
}

func newReceiver(t *testing.T) *receiver {
	r := &receiver{status: 204}
	r.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		b, _ := io.ReadAll(req.Body)
		r.mu.Lock()
		r.hits = append(r.hits, req)
		r.bodies = append(r.bodies, string(b))
		status, delay, hold := r.status, r.delay, r.hold
		r.hold = nil
		r.mu.Unlock()
		if hold != nil {
			hold()
		}
		time.Sleep(delay)
		w.WriteHeader(status)
	}))
	t.Cleanup(r.Close)
	return r
}

func (r *receiver) set(status int, delay time.Duration) {
	r.mu.Lock()
	r.status, r.delay = status, delay
	r.mu.Unlock()
}

func (r *receiver) requests() []*http.Request {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]*http.Request(nil), r.hits...)
}

type env struct {
	t      testing.TB
	engine *delivery.Engine
	tiki   *Handler
	doshii *Handler
}

func newEnv(t testing.TB, timeout time.Duration) *env {
	t.Helper()
	return newEnvWritable(t, timeout, nil)
}

// newEnvWritable is newEnv with the store asking writable before it adds
// data (nil: always).
func newEnvWritable(t testing.TB, timeout time.Duration, writable func() error) *env {
	t.Helper()
	db, err := store.Open(t.TempDir(), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	s := delivery.NewStore(db.DB)
	s.SetWritable(writable)
	e := delivery.NewEngine(s, nil, nil)
	if err := e.Configure(delivery.Config{AllowPrivateTargets: true, Timeout: timeout, Retry: []time.Duration{time.Hour}}); err != nil {
		t.Fatal(err)
	}
	if err := e.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Stop(); db.Close() })
	return &env{t: t, engine: e,
		tiki:   &Handler{Engine: e, Dialect: Tiki},
		doshii: &Handler{Engine: e, Dialect: Doshii, Verify: true},
	}
}

type reply struct {
	Status int
	Body   string
	Header http.Header
}

func (r reply) json(t *testing.T) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal([]byte(r.Body), &m); err != nil {
		t.Fatalf("not a JSON object: %q", r.Body)
	}
	return m
}

func (e *env) do(h *Handler, tenant, method, target, body string, header ...string) reply {
	e.t.Helper()
	req := httptest.NewRequest(method, target, strings.NewReader(body))
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	base, tail, ok := SplitPath(req.URL.EscapedPath())
	if !ok {
		e.t.Fatalf("SplitPath(%q) failed", target)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, Request{Request: req, Tenant: tenant, Base: base, Tail: tail})
	if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
		e.t.Fatalf("%s %s: Content-Type %q", method, target, ct)
	}
	return reply{Status: rec.Code, Body: strings.TrimSpace(rec.Body.String()), Header: rec.Header()}
}

func expect(t testing.TB, got reply, status int, body string) {
	t.Helper()
	if got.Status != status || (body != "" && got.Body != body) {
		t.Fatalf("got %d %s\nwant %d %s", got.Status, got.Body, status, body)
	}
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("timed out waiting for %s", what)
}

func TestSplitPath(t *testing.T) {
	cases := map[string]struct {
		base string
		tail []string
	}{
		"/v1/webhooks":                          {"/v1/webhooks", nil},
		"/v1/webhooks/":                         {"/v1/webhooks", nil},
		"/v1/webhooks/credentials":              {"/v1/webhooks", []string{"credentials"}},
		"/partner/v3/webhooks/order_created":    {"/partner/v3/webhooks", []string{"order_created"}},
		"/a/webhooks/b/webhooks/x/test":         {"/a/webhooks/b/webhooks", []string{"x", "test"}},
		"/webhooks/product%3Arequest%3Aok/test": {"/webhooks", []string{"product:request:ok", "test"}},
	}
	for in, want := range cases {
		base, tail, ok := SplitPath(in)
		if !ok || base != want.base || strings.Join(tail, "|") != strings.Join(want.tail, "|") {
			t.Errorf("%s: %q %q %v", in, base, tail, ok)
		}
	}
	for _, in := range []string{"/v1/hooks", "/webhooks/a/b/c", "/"} {
		if _, _, ok := SplitPath(in); ok {
			t.Errorf("%s: matched", in)
		}
	}
}

func TestTikiSeedExamples(t *testing.T) {
	e := newEnv(t, 2*time.Second)
	rcv := newReceiver(t)
	uri := rcv.URL + "/your/product/request/rejected/endpoint"
	reg := `{"uri":"` + uri + `","event":"product:request:rejected"}`

	expect(t, e.do(e.tiki, "seller-1", "GET", "/v1/webhooks", ""), 200, `{"data":[]}`)
	expect(t, e.do(e.tiki, "seller-1", "POST", "/v1/webhooks", reg), 200,
		`{"event":"product:request:rejected","seller_id":"seller-1","uri":"`+uri+`"}`)
	expect(t, e.do(e.tiki, "seller-1", "POST", "/v1/webhooks", reg), 409,
		`{"error":{"message":"Webhook for this event has been registered. Please update it instead."}}`)
	for _, bad := range []string{"not a url", "/relative/path", "ftp://example.com/x", "https://", "mailto:a@b.c", ""} {
		expect(t, e.do(e.tiki, "seller-1", "POST", "/v1/webhooks", `{"uri":"`+bad+`","event":"product:request:approved"}`), 400,
			`{"error":{"message":"Invalid URI"}}`)
		expect(t, e.do(e.tiki, "seller-1", "PUT", "/v1/webhooks", `{"uri":"`+bad+`","event":"product:request:rejected"}`), 400,
			`{"error":{"message":"Invalid URI"}}`)
	}
	approved := rcv.URL + "/your/product/request/approved/endpoint"
	e.do(e.tiki, "seller-1", "POST", "/v1/webhooks", `{"uri":"`+approved+`","event":"product:request:approved"}`)
	expect(t, e.do(e.tiki, "seller-1", "GET", "/v1/webhooks", ""), 200,
		`{"data":[{"uri":"`+approved+`","event":"product:request:approved"},{"uri":"`+uri+`","event":"product:request:rejected"}]}`)

	newURI := rcv.URL + "/new/product/request/rejected/endpoint"
	expect(t, e.do(e.tiki, "seller-1", "PUT", "/v1/webhooks", `{"uri":"`+newURI+`","event":"product:request:rejected"}`), 200,
		`{"uri":"`+newURI+`","event":"product:request:rejected"}`)
	expect(t, e.do(e.tiki, "seller-1", "PUT", "/v1/webhooks", `{"uri":"`+newURI+`","event":"never:registered"}`), 404,
		`{"error":{"message":"Webhook not found"}}`)

	expect(t, e.do(e.tiki, "seller-1", "DELETE", "/v1/webhooks?event=product:request:approved", ""), 200, "")
	expect(t, e.do(e.tiki, "seller-1", "DELETE", "/v1/webhooks?event=product:request:approved", ""), 404,
		`{"error":{"message":"Webhook not found"}}`)
	expect(t, e.do(e.tiki, "seller-1", "DELETE", "/v1/webhooks", ""), 400,
		`{"error":{"message":"event query parameter is required"}}`)

	// Granted credentials: deliveries to this seller carry Basic auth,
	// for webhooks registered before and after the grant.
	expect(t, e.do(e.tiki, "seller-1", "PUT", "/v1/webhooks/credentials",
		`{"id":"some random string to identify us","secret":"another random string as the secret"}`), 200,
		`{"id":"some random string to identify us"}`)
	e.do(e.tiki, "seller-1", "POST", "/v1/webhooks", `{"uri":"`+approved+`","event":"product:request:approved"}`)
	for _, ev := range []string{"product:request:rejected", "product:request:approved"} {
		if res, err := e.engine.Publish(delivery.Message{Event: ev, Tenant: "seller-1", Data: []byte(`{"sku":"A1"}`)}); err != nil || res.Deliveries != 1 {
			t.Fatalf("publish %s: %+v %v", ev, res, err)
		}
	}
	eventually(t, "two deliveries", func() bool { return len(rcv.requests()) == 2 })
	for _, r := range rcv.requests() {
		u, p, ok := r.BasicAuth()
		if !ok || u != "some random string to identify us" || p != "another random string as the secret" {
			t.Fatalf("%s: basic auth %q %q %v", r.URL.Path, u, p, ok)
		}
	}
	if paths := rcv.requests()[0].URL.Path + " " + rcv.requests()[1].URL.Path; !strings.Contains(paths, "/new/product/request/rejected/endpoint") {
		t.Fatalf("the update did not take: %s", paths)
	}
}

func TestTikiBadInput(t *testing.T) {
	e := newEnv(t, time.Second)
	e.tiki.MaxBody = 100
	cases := []struct {
		method, path, body string
		status             int
		want               string
	}{
		{"PATCH", "/v1/webhooks", "{}", 405, `{"error":{"message":"method not allowed"}}`},
		{"GET", "/v1/webhooks/credentials", "", 405, `{"error":{"message":"method not allowed"}}`},
		{"POST", "/v1/webhooks", `{"uri":`, 400, `{"error":{"message":"malformed JSON"}}`},
		{"POST", "/v1/webhooks", `[]`, 400, `{"error":{"message":"request body must be a JSON object"}}`},
		{"POST", "/v1/webhooks", `{"uri":"https://a.example","event":7}`, 400, `{"error":{"message":"event must be a string"}}`},
		{"POST", "/v1/webhooks", `{"uri":"https://a.example"}`, 400, `{"error":{"message":"event is required"}}`},
		{"POST", "/v1/webhooks", `{"uri":"https://a.example","event":"` + strings.Repeat("e", 100) + `"}`, 413, `{"error":{"message":"request body too large"}}`},
		{"PUT", "/v1/webhooks/credentials", `{"id":"x"}`, 400, `{"error":{"message":"id and secret are required"}}`},
		{"PUT", "/v1/webhooks/credentials", `{"id":"x:y","secret":"s"}`, 400, `{"error":{"message":"the basic user id must not contain ':'"}}`},
		{"PUT", "/v1/webhooks/credentials", `{"id":"x","secret":"s\r\n"}`, 400, `{"error":{"message":"the basic user id and password must not contain control characters"}}`},
		{"POST", "/v1/webhooks/x/launch", ``, 404, `{"error":{"message":"not found"}}`},
	}
	for _, c := range cases {
		got := e.do(e.tiki, "s", c.method, c.path, c.body)
		if got.Status != c.status || got.Body != c.want {
			t.Errorf("%s %s %s: got %d %s, want %d %s", c.method, c.path, c.body, got.Status, got.Body, c.status, c.want)
		}
	}
	bomb := testcompress.Encode(t, "gzip", `{"uri":"https://a.example","event":"`+strings.Repeat("e", 1000)+`"}`)
	if len(bomb) > 100 {
		t.Fatalf("the compressed body is %d bytes, not under max_body", len(bomb))
	}
	expect(t, e.do(e.tiki, "s", "POST", "/v1/webhooks", bomb, "Content-Encoding", "gzip"), 413, `{"error":{"message":"request body too large"}}`)
	expect(t, e.do(e.tiki, "s", "POST", "/v1/webhooks", "{}", "Content-Encoding", "gzip"), 400, `{"error":{"message":"request body could not be read"}}`)
	br := e.do(e.tiki, "s", "POST", "/v1/webhooks", "{}", "Content-Encoding", "br")
	expect(t, br, 415, `{"error":{"message":"unsupported content encoding"}}`)
	if got := br.Header.Get("Accept-Encoding"); got != "gzip, deflate" {
		t.Errorf("415 with Accept-Encoding %q", got)
	}
	if got := e.do(e.tiki, "s", "PATCH", "/v1/webhooks", "{}"); got.Header.Get("Allow") != "GET, POST, PUT, DELETE" {
		t.Errorf("Allow = %q", got.Header.Get("Allow"))
	}
	if subs := e.engine.Subscriptions(); len(subs) != 0 {
		t.Fatalf("bad input stored %d subscriptions", len(subs))
	}
}

func TestTikiVerify(t *testing.T) {
	e := newEnv(t, 300*time.Millisecond)
	e.tiki.Verify = true
	rcv := newReceiver(t)
	reg := func(event string) reply {
		return e.do(e.tiki, "s", "POST", "/v1/webhooks", `{"uri":"`+rcv.URL+`/hook","event":"`+event+`"}`)
	}
	rcv.set(500, 0)
	expect(t, reg("a"), 400, `{"error":{"message":"webhook verification failed: receiver answered 500 Internal Server Error"}}`)
	rcv.set(301, 0)
	expect(t, reg("a"), 400, `{"error":{"message":"webhook verification failed: receiver answered 301 Moved Permanently"}}`)
	rcv.set(204, time.Second)
	expect(t, reg("a"), 400, `{"error":{"message":"webhook verification failed: timed out"}}`)
	if n := len(e.engine.Subscriptions()); n != 0 {
		t.Fatalf("failed verifications stored %d subscriptions", n)
	}
	rcv.set(204, 0)
	expect(t, reg("a"), 200, "")
	last := rcv.requests()[len(rcv.requests())-1]
	if last.Header.Get("X-Event-Name") != EventVerify || last.Method != "POST" {
		t.Fatalf("verification request %s %v", last.Method, last.Header)
	}
	// An update is verified too, and a failed one changes nothing.
	rcv.set(500, 0)
	expect(t, e.do(e.tiki, "s", "PUT", "/v1/webhooks", `{"uri":"`+rcv.URL+`/elsewhere","event":"a"}`), 400, "")
	if sub, _ := e.engine.Subscription(subID(Tiki, "s", "", "a")); !strings.HasSuffix(sub.URL, "/hook") {
		t.Fatalf("a failed update changed the URL to %s", sub.URL)
	}
}

// An update that passes verification shows the endpoint works: a webhook
// disabled at that same URL is enabled by it. Without verification (Tiki
// without verify) it stays disabled until enable.
func TestVerifiedUpdateEnables(t *testing.T) {
	e := newEnv(t, time.Second)
	rcv := newReceiver(t)
	disable := func(tenant, id, event string) {
		t.Helper()
		rcv.set(410, 0)
		if _, err := e.engine.Publish(delivery.Message{Event: event, Tenant: tenant, Data: []byte(`{}`)}); err != nil {
			t.Fatal(err)
		}
		eventually(t, "disabled by 410", func() bool { h, _ := e.engine.Health(id); return h.Disabled })
		rcv.set(204, 0)
	}
	disabled := func(id string) bool {
		h, err := e.engine.Health(id)
		if err != nil {
			t.Fatal(err)
		}
		return h.Disabled
	}

	tiki := `{"uri":"` + rcv.URL + `","event":"order.status"}`
	tikiID := subID(Tiki, "s", "", "order.status")
	expect(t, e.do(e.tiki, "s", "POST", "/v1/webhooks", tiki), 200, "")
	disable("s", tikiID, "order.status")
	expect(t, e.do(e.tiki, "s", "PUT", "/v1/webhooks", tiki), 200, "")
	if !disabled(tikiID) {
		t.Fatal("an unverified update with the same URL enabled the webhook")
	}
	e.tiki.Verify = true
	expect(t, e.do(e.tiki, "s", "PUT", "/v1/webhooks", tiki), 200, "")
	if disabled(tikiID) {
		t.Fatal("a verified update with the same URL left the webhook disabled")
	}

	doshii := `{"webhookUrl":"` + rcv.URL + `"}`
	doshiiID := subID(Doshii, "p", "", "order.created")
	expect(t, e.do(e.doshii, "p", "POST", "/webhooks", `{"event":"order.created","webhookUrl":"`+rcv.URL+`"}`), 200, "")
	disable("p", doshiiID, "order.created")
	rcv.set(500, 0)
	expect(t, e.do(e.doshii, "p", "PUT", "/webhooks/order.created", doshii), 400, "")
	if !disabled(doshiiID) {
		t.Fatal("an update that failed verification enabled the webhook")
	}
	rcv.set(204, 0)
	expect(t, e.do(e.doshii, "p", "PUT", "/webhooks/order.created", doshii), 200, "")
	if disabled(doshiiID) {
		t.Fatal("a verified Doshii update left the webhook disabled")
	}
	// Deliveries go out again.
	if _, err := e.engine.Publish(delivery.Message{Event: "order.created", Tenant: "p", Data: []byte(`{}`)}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "a delivery", func() bool {
		a, _ := e.engine.RecentAttempts(doshiiID, 10)
		return len(a) == 2 && a[0].Success
	})
}

func TestDoshiiSeedExample(t *testing.T) {
	e := newEnv(t, 2*time.Second)
	rcv := newReceiver(t)
	body := `{"event":"order_created","webhookUrl":"` + rcv.URL + `/doshii/webhook","authenticationKey":"secure_key","authenticationToken":"secure_token"}`
	got := e.do(e.doshii, "partner", "POST", "http://sandbox.doshii.co/partner/v3/webhooks", body)
	expect(t, got, 200, "")
	m := got.json(t)
	if m["event"] != "order_created" || m["webhookUrl"] != rcv.URL+"/doshii/webhook" || m["authenticationEnabled"] != true ||
		m["uri"] != "http://sandbox.doshii.co/partner/v3/webhooks/order_created" {
		t.Fatalf("response %v", m)
	}
	if lat, _ := m["webhookLatency"].(float64); lat < 1 {
		t.Fatalf("webhookLatency %v", m["webhookLatency"])
	}
	for _, f := range []string{"createdAt", "updatedAt"} {
		if _, err := time.Parse("2006-01-02T15:04:05.000Z", m[f].(string)); err != nil {
			t.Fatalf("%s %q: %v", f, m[f], err)
		}
	}
	if len(m) != 7 {
		t.Fatalf("fields %v, want exactly the seven of the seed", m)
	}
	// Verification happened, with the webhook's authentication.
	if v := rcv.requests()[0]; v.Header.Get("X-Event-Name") != EventVerify || v.Header.Get("Authorization") != "Basic "+base64.StdEncoding.EncodeToString([]byte("secure_key:secure_token")) {
		t.Fatalf("verification %v", v.Header)
	}

	// One global webhook per event; a location may have its own.
	expect(t, e.do(e.doshii, "partner", "POST", "/partner/v3/webhooks", `{"event":"order_created","webhookUrl":"`+rcv.URL+`/other"}`), 409,
		`{"message":"only one global webhook may be registered for event order_created"}`)
	expect(t, e.do(e.doshii, "partner", "POST", "/partner/v3/webhooks", `{"event":"order_created","webhookUrl":"`+rcv.URL+`/loc1","authenticationToken":"tok-1"}`,
		HeaderDoshiiLocation, "loc-1"), 200, "")
	expect(t, e.do(e.doshii, "partner", "POST", "/partner/v3/webhooks", `{"event":"order_created","webhookUrl":"`+rcv.URL+`/loc1b"}`,
		HeaderDoshiiLocation, "loc-1"), 409, `{"message":"a webhook for event order_created is already registered for this location"}`)

	// Deliveries: the global webhook gets every location, the location one
	// only its own; key+token is Basic, a token alone is the header as is.
	before := len(rcv.requests())
	for _, loc := range []string{"loc-1", "loc-2"} {
		e.engine.Publish(delivery.Message{Event: "order_created", Tenant: "partner", Location: loc, Data: []byte(`{"id":1}`)})
	}
	eventually(t, "three deliveries", func() bool { return len(rcv.requests()) == before+3 })
	byPath := map[string][]string{}
	for _, r := range rcv.requests()[before:] {
		byPath[r.URL.Path] = append(byPath[r.URL.Path], r.Header.Get("Authorization"))
	}
	if len(byPath["/doshii/webhook"]) != 2 || len(byPath["/loc1"]) != 1 || byPath["/loc1"][0] != "tok-1" ||
		byPath["/doshii/webhook"][0] != "Basic "+base64.StdEncoding.EncodeToString([]byte("secure_key:secure_token")) {
		t.Fatalf("deliveries %v", byPath)
	}

	// Attempts: all of the partner's, or only a location's when the
	// header names one; a location webhook's carry their location.
	type attemptView struct {
		Location string `json:"locationId"`
		Status   int    `json:"status"`
	}
	attemptsOf := func(header ...string) []attemptView {
		t.Helper()
		r := e.do(e.doshii, "partner", "GET", "/partner/v3/webhooks/attempts", "", header...)
		var got struct{ Data []attemptView }
		if err := json.Unmarshal([]byte(r.Body), &got); err != nil || r.Status != 200 {
			t.Fatalf("attempts: %d %s", r.Status, r.Body)
		}
		return got.Data
	}
	eventually(t, "three attempts recorded", func() bool { return len(attemptsOf()) == 3 })
	locations := map[string]int{}
	for _, a := range attemptsOf() {
		locations[a.Location]++
	}
	if locations[""] != 2 || locations["loc-1"] != 1 {
		t.Fatalf("attempts by location %v, want 2 of the global webhook and 1 of loc-1's", locations)
	}
	if got := attemptsOf(HeaderDoshiiLocation, "loc-1"); len(got) != 1 || got[0].Location != "loc-1" || got[0].Status != 204 {
		t.Fatalf("loc-1's attempts: %+v", got)
	}
	if got := attemptsOf(HeaderDoshiiLocation, "loc-2"); len(got) != 0 {
		t.Fatalf("loc-2 has no webhook, yet attempts %+v", got)
	}

	// GET, PUT, DELETE by event, in the location scope of the header.
	if got := e.do(e.doshii, "partner", "GET", "/partner/v3/webhooks/order_created", "", HeaderDoshiiLocation, "loc-1").json(t); got["webhookUrl"] != rcv.URL+"/loc1" {
		t.Fatalf("GET loc-1: %v", got)
	}
	list := e.do(e.doshii, "partner", "GET", "/partner/v3/webhooks", "")
	if list.Status != 200 || strings.Count(list.Body, `"event":"order_created"`) != 2 {
		t.Fatalf("list %s", list.Body)
	}
	upd := e.do(e.doshii, "partner", "PUT", "/partner/v3/webhooks/order_created", `{"webhookUrl":"`+rcv.URL+`/v2","authenticationToken":"","authenticationKey":""}`)
	if m := upd.json(t); upd.Status != 200 || m["webhookUrl"] != rcv.URL+"/v2" || m["authenticationEnabled"] != false {
		t.Fatalf("PUT %d %s", upd.Status, upd.Body)
	}
	expect(t, e.do(e.doshii, "partner", "DELETE", "/partner/v3/webhooks/order_created", ""), 200, "")
	expect(t, e.do(e.doshii, "partner", "GET", "/partner/v3/webhooks/order_created", ""), 404, `{"message":"webhook not found"}`)
	expect(t, e.do(e.doshii, "partner", "GET", "/partner/v3/webhooks/order_created", "", HeaderDoshiiLocation, "loc-1"), 200, "")
}

func TestDoshiiBadInputAndVerification(t *testing.T) {
	e := newEnv(t, 300*time.Millisecond)
	rcv := newReceiver(t)
	cases := []struct {
		method, path, body string
		status             int
		want               string
	}{
		{"PATCH", "/webhooks", "{}", 405, `{"message":"method not allowed"}`},
		{"POST", "/webhooks/x", "{}", 405, `{"message":"method not allowed"}`},
		{"POST", "/webhooks", `{"event":`, 400, `{"message":"malformed JSON"}`},
		{"POST", "/webhooks", `{"webhookUrl":"https://a.example"}`, 400, `{"message":"event is required"}`},
		{"POST", "/webhooks", `{"event":"e"}`, 400, `{"message":"webhookUrl is required"}`},
		{"POST", "/webhooks", `{"event":"e","webhookUrl":"nope"}`, 400, `{"message":"webhookUrl must be an absolute http or https URL"}`},
		{"POST", "/webhooks", `{"event":"e","webhookUrl":"` + rcv.URL + `","authenticationKey":"k"}`, 400, `{"message":"authenticationToken is required with authenticationKey"}`},
		{"POST", "/webhooks", `{"event":"e","webhookUrl":"` + rcv.URL + `","authenticationKey":"k:1","authenticationToken":"t"}`, 400, `{"message":"authenticationKey must not contain ':'"}`},
		{"POST", "/webhooks", `{"event":"e","webhookUrl":"` + rcv.URL + `","authenticationToken":"t\r\nX-Other: 1"}`, 400, `{"message":"authenticationKey and authenticationToken must not contain control characters"}`},
		{"POST", "/webhooks", `{"event":"e","webhookUrl":"` + rcv.URL + `","authenticationKey":"k\u0000","authenticationToken":"t"}`, 400, `{"message":"authenticationKey and authenticationToken must not contain control characters"}`},
		{"PUT", "/webhooks/e", `{"webhookUrl":"` + rcv.URL + `"}`, 404, `{"message":"webhook not found"}`},
		{"DELETE", "/webhooks/e", ``, 404, `{"message":"webhook not found"}`},
	}
	for _, c := range cases {
		got := e.do(e.doshii, "p", c.method, c.path, c.body)
		if got.Status != c.status || got.Body != c.want {
			t.Errorf("%s %s %s: got %d %s, want %d %s", c.method, c.path, c.body, got.Status, got.Body, c.status, c.want)
		}
	}
	// Verification is always on for doshii: failure and timeout refuse.
	rcv.set(404, 0)
	expect(t, e.do(e.doshii, "p", "POST", "/webhooks", `{"event":"e","webhookUrl":"`+rcv.URL+`"}`), 400,
		`{"message":"webhook verification failed: receiver answered 404 Not Found"}`)
	rcv.set(204, time.Second)
	expect(t, e.do(e.doshii, "p", "POST", "/webhooks", `{"event":"e","webhookUrl":"`+rcv.URL+`"}`), 400,
		`{"message":"webhook verification failed: timed out"}`)
	if n := len(e.engine.Subscriptions()); n != 0 {
		t.Fatalf("stored %d subscriptions", n)
	}
}

// One tenant can neither read, update, delete, test, enable nor redeliver
// another's webhooks, in either dialect.
func TestTenantIsolation(t *testing.T) {
	e := newEnv(t, time.Second)
	rcv := newReceiver(t)
	expect(t, e.do(e.tiki, "alice", "POST", "/v1/webhooks", `{"uri":"`+rcv.URL+`","event":"ev"}`), 200, "")
	expect(t, e.do(e.doshii, "alice", "POST", "/webhooks", `{"event":"ev","webhookUrl":"`+rcv.URL+`"}`), 200, "")
	hits := len(rcv.requests())

	expect(t, e.do(e.tiki, "bob", "GET", "/v1/webhooks", ""), 200, `{"data":[]}`)
	expect(t, e.do(e.tiki, "bob", "PUT", "/v1/webhooks", `{"uri":"`+rcv.URL+`/evil","event":"ev"}`), 404, "")
	expect(t, e.do(e.tiki, "bob", "DELETE", "/v1/webhooks?event=ev", ""), 404, "")
	expect(t, e.do(e.doshii, "bob", "GET", "/webhooks", ""), 200, `[]`)
	expect(t, e.do(e.doshii, "bob", "GET", "/webhooks/ev", ""), 404, "")
	expect(t, e.do(e.doshii, "bob", "PUT", "/webhooks/ev", `{"webhookUrl":"`+rcv.URL+`/evil"}`), 404, "")
	expect(t, e.do(e.doshii, "bob", "DELETE", "/webhooks/ev", ""), 404, "")
	for _, h := range []*Handler{e.tiki, e.doshii} {
		for _, op := range []string{"test", "enable", "redeliver", "retry"} {
			expect(t, e.do(h, "bob", "POST", "/webhooks/ev/"+op, ""), 404, "")
		}
		expect(t, e.do(h, "bob", "GET", "/webhooks/ev/attempts", ""), 404, "")
		expect(t, e.do(h, "bob", "GET", "/webhooks/attempts", ""), 200, `{"data":[]}`)
	}
	// bob registering the same event gets his own webhook, not alice's.
	expect(t, e.do(e.tiki, "bob", "POST", "/v1/webhooks", `{"uri":"`+rcv.URL+`/bob","event":"ev"}`), 200, "")
	if n := len(rcv.requests()); n != hits {
		t.Fatalf("bob's calls reached alice's receiver (%d requests)", n-hits)
	}
	if got := e.do(e.tiki, "alice", "GET", "/v1/webhooks", ""); !strings.Contains(got.Body, `"uri":"`+rcv.URL+`"`) || strings.Contains(got.Body, "/bob") || strings.Contains(got.Body, "/evil") {
		t.Fatalf("alice's webhooks changed: %s", got.Body)
	}
}

func TestOperations(t *testing.T) {
	e := newEnv(t, time.Second)
	rcv := newReceiver(t)
	expect(t, e.do(e.tiki, "s", "POST", "/v1/webhooks", `{"uri":"`+rcv.URL+`","event":"order.status"}`), 200, "")

	test := e.do(e.tiki, "s", "POST", "/v1/webhooks/order.status/test", "")
	if m := test.json(t); test.Status != 200 || m["success"] != true || m["status"] != float64(204) || m["event"] != "order.status" {
		t.Fatalf("test: %d %s", test.Status, test.Body)
	}
	if r := rcv.requests()[0]; r.Header.Get("X-Event-Name") != "order.status" {
		t.Fatalf("test request %v", r.Header)
	}
	rcv.set(500, 0)
	if m := e.do(e.tiki, "s", "POST", "/v1/webhooks/order.status/test", "").json(t); m["success"] != false || m["status"] != float64(500) {
		t.Fatalf("failing test: %v", m)
	}

	// A delivery that fails for good shows in the attempts and comes back
	// with redeliver once the receiver is fixed.
	e.engine.Configure(delivery.Config{AllowPrivateTargets: true, Retry: []time.Duration{}})
	res, _ := e.engine.Publish(delivery.Message{Event: "order.status", Tenant: "s", Data: []byte(`{"n":1}`)})
	id := subID(Tiki, "s", "", "order.status")
	eventually(t, "the failed attempt", func() bool {
		a, _ := e.engine.RecentAttempts(id, 10)
		return len(a) == 1
	})
	att := e.do(e.tiki, "s", "GET", "/v1/webhooks/attempts", "")
	if att.Status != 200 || !strings.Contains(att.Body, `"message_id":"`+res.ID+`"`) || !strings.Contains(att.Body, `"status":500`) {
		t.Fatalf("attempts: %s", att.Body)
	}
	rcv.set(204, 0)
	expect(t, e.do(e.tiki, "s", "POST", "/v1/webhooks/order.status/redeliver", ""), 200, `{"event":"order.status","redelivered":1}`)
	eventually(t, "the redelivery", func() bool {
		a, _ := e.engine.RecentAttempts(id, 10)
		return len(a) == 2 && a[0].Success
	})
	expect(t, e.do(e.tiki, "s", "POST", "/v1/webhooks/order.status/redeliver", ""), 200, `{"event":"order.status","redelivered":0}`)

	// retry sends a delivery waiting on its retry schedule now.
	e.engine.Configure(delivery.Config{AllowPrivateTargets: true, Retry: []time.Duration{time.Hour}})
	rcv.set(503, 0)
	e.engine.Publish(delivery.Message{Event: "order.status", Tenant: "s", Data: []byte(`{"n":3}`)})
	eventually(t, "the refused attempt", func() bool {
		a, _ := e.engine.RecentAttempts(id, 10)
		return len(a) == 3
	})
	rcv.set(204, 0)
	expect(t, e.do(e.tiki, "s", "POST", "/v1/webhooks/order.status/retry", ""), 200, `{"event":"order.status","rescheduled":1}`)
	eventually(t, "the retry", func() bool {
		a, _ := e.engine.RecentAttempts(id, 10)
		return len(a) == 4 && a[0].Success && a[0].N == 2
	})

	// enable clears a disabled webhook (disabled here by a 410).
	rcv.set(410, 0)
	e.engine.Publish(delivery.Message{Event: "order.status", Tenant: "s", Data: []byte(`{"n":2}`)})
	eventually(t, "disabled", func() bool { h, _ := e.engine.Health(id); return h.Disabled })
	expect(t, e.do(e.tiki, "s", "POST", "/v1/webhooks/order.status/enable", ""), 200, `{"enabled":true,"event":"order.status"}`)
	if h, _ := e.engine.Health(id); h.Disabled {
		t.Fatal("still disabled")
	}
	// Doshii names the fields its way.
	expect(t, e.do(e.doshii, "s", "POST", "/webhooks", `{"event":"e2","webhookUrl":"`+rcv.URL+`"}`), 400, "") // 410 fails verification
	rcv.set(204, 0)
	expect(t, e.do(e.doshii, "s", "POST", "/webhooks", `{"event":"e2","webhookUrl":"`+rcv.URL+`"}`), 200, "")
	if m := e.do(e.doshii, "s", "POST", "/webhooks/e2/test", "").json(t); m["webhookLatency"] == nil || m["latency_ms"] != nil {
		t.Fatalf("doshii test fields %v", m)
	}
}

// heldVerification makes the receiver hold the next request it gets (a
// verification) until the returned release is called; arrived is closed
// once that request is in.
func heldVerification(t *testing.T, r *receiver) (arrived <-chan struct{}, release func()) {
	in, out := make(chan struct{}), make(chan struct{})
	var once sync.Once
	release = func() { once.Do(func() { close(out) }) }
	t.Cleanup(release) // before the receiver's Close, which waits for it
	r.mu.Lock()
	r.hold = func() { close(in); <-out }
	r.mu.Unlock()
	return in, release
}

// A registration is checked again when it is stored, after its
// verification: what another call of the tenant did meanwhile stands.
func TestRegistrationRacesResolveWhenStored(t *testing.T) {
	e := newEnv(t, 5*time.Second)
	e.tiki.Verify = true
	rcv := newReceiver(t)
	body := func(event, path string) string {
		return `{"uri":"` + rcv.URL + path + `","event":"` + event + `"}`
	}
	inBackground := func(method, target, body string) <-chan reply {
		out := make(chan reply, 1)
		go func() { out <- e.do(e.tiki, "s", method, target, body) }()
		return out
	}

	// Two registrations of one event: the one verified last gets 409.
	arrived, release := heldVerification(t, rcv)
	first := inBackground("POST", "/v1/webhooks", body("a", "/first"))
	<-arrived
	expect(t, e.do(e.tiki, "s", "POST", "/v1/webhooks", body("a", "/second")), 200, "")
	release()
	expect(t, <-first, 409, `{"error":{"message":"`+tikiConflict+`"}}`)
	if sub, _ := e.engine.Subscription(subID(Tiki, "s", "", "a")); !strings.HasSuffix(sub.URL, "/second") {
		t.Fatalf("registered URL %s, want the one stored first", sub.URL)
	}

	// An update whose webhook is deleted while it is verified does not
	// bring it back.
	arrived, release = heldVerification(t, rcv)
	update := inBackground("PUT", "/v1/webhooks", body("a", "/third"))
	<-arrived
	expect(t, e.do(e.tiki, "s", "DELETE", "/v1/webhooks?event=a", ""), 200, "")
	release()
	expect(t, <-update, 404, `{"error":{"message":"`+tikiNotFound+`"}}`)
	if _, ok := e.engine.Subscription(subID(Tiki, "s", "", "a")); ok {
		t.Fatal("the update brought a deleted webhook back")
	}

	// Credentials granted while a registration is verified reach it.
	arrived, release = heldVerification(t, rcv)
	register := inBackground("POST", "/v1/webhooks", body("b", "/hook"))
	<-arrived
	expect(t, e.do(e.tiki, "s", "PUT", "/v1/webhooks/credentials", `{"id":"seller-s","secret":"granted"}`), 200, "")
	release()
	expect(t, <-register, 200, "")
	if sub, _ := e.engine.Subscription(subID(Tiki, "s", "", "b")); sub.Auth.BasicUser != "seller-s" || sub.Auth.BasicPassword != "granted" {
		t.Fatalf("registered without the credentials granted meanwhile: user %q", sub.Auth.BasicUser)
	}
}

// The operations answer a wrong method with 405 and the method they take,
// and an unknown path with 404; a registration the engine cannot store
// (a name with a control character or '|', which delivery IDs use as a
// separator) is refused with the reason, in the dialect's error shape.
func TestOperationsAndRegistrationBadInput(t *testing.T) {
	e := newEnv(t, time.Second)
	rcv := newReceiver(t)
	expect(t, e.do(e.tiki, "s", "POST", "/v1/webhooks", `{"uri":"`+rcv.URL+`","event":"ev"}`), 200, "")
	cases := []struct {
		method, path, body string
		status             int
		want, allow        string
	}{
		{"POST", "/v1/webhooks/attempts", "", 405, `{"error":{"message":"method not allowed"}}`, "GET"},
		{"GET", "/v1/webhooks/ev/test", "", 405, `{"error":{"message":"method not allowed"}}`, "POST"},
		{"POST", "/v1/webhooks/ev/attempts", "", 405, `{"error":{"message":"method not allowed"}}`, "GET"},
		{"GET", "/v1/webhooks/ev", "", 404, `{"error":{"message":"not found"}}`, ""},
		{"PUT", "/v1/webhooks/credentials", `{"id":`, 400, `{"error":{"message":"malformed JSON"}}`, ""},
		{"POST", "/v1/webhooks", `{"uri":"` + rcv.URL + `","event":"a|b"}`, 400, `{"error":{"message":"event must not contain control characters or '|'"}}`, ""},
		{"POST", "/v1/webhooks", `{"uri":"` + rcv.URL + `","event":"a\u0007"}`, 400, `{"error":{"message":"event must not contain control characters or '|'"}}`, ""},
	}
	for _, c := range cases {
		got := e.do(e.tiki, "s", c.method, c.path, c.body)
		if got.Status != c.status || got.Body != c.want || got.Header.Get("Allow") != c.allow {
			t.Errorf("%s %s %s: got %d %s (Allow %q), want %d %s (Allow %q)", c.method, c.path, c.body,
				got.Status, got.Body, got.Header.Get("Allow"), c.status, c.want, c.allow)
		}
	}
	expect(t, e.do(e.tiki, "a|b", "POST", "/v1/webhooks", `{"uri":"`+rcv.URL+`","event":"ev"}`), 400,
		`{"error":{"message":"tenant must not contain control characters or '|'"}}`)

	expect(t, e.do(e.doshii, "p", "POST", "/webhooks", `{"event":"ev","webhookUrl":"`+rcv.URL+`"}`), 200, "")
	expect(t, e.do(e.doshii, "p", "PUT", "/webhooks/ev", `{"event":"other","webhookUrl":"`+rcv.URL+`/new"}`), 400,
		`{"message":"event in the body does not match the path"}`)
	if got := e.do(e.doshii, "p", "GET", "/webhooks/ev", "").json(t); got["webhookUrl"] != rcv.URL {
		t.Fatalf("a refused update changed the webhook: %v", got)
	}
	if n := len(e.engine.Subscriptions()); n != 2 {
		t.Fatalf("%d subscriptions stored, want the 2 registered", n)
	}
}

// One webhook's attempts, newest first, as many as ?limit= asks.
func TestAttemptsOfOneWebhook(t *testing.T) {
	e := newEnv(t, time.Second)
	rcv := newReceiver(t)
	expect(t, e.do(e.tiki, "s", "POST", "/v1/webhooks", `{"uri":"`+rcv.URL+`","event":"a"}`), 200, "")
	expect(t, e.do(e.tiki, "s", "POST", "/v1/webhooks", `{"uri":"`+rcv.URL+`","event":"b"}`), 200, "")
	var ids []string
	for i, ev := range []string{"a", "a", "b", "a"} {
		res, err := e.engine.Publish(delivery.Message{Event: ev, Tenant: "s", Data: []byte(`{}`)})
		if err != nil {
			t.Fatal(err)
		}
		if ev == "a" {
			ids = append(ids, res.ID)
		}
		// One at a time, so that the attempts' order is the publishes'.
		eventually(t, "the delivery", func() bool { return len(rcv.requests()) == i+1 })
	}
	eventually(t, "a's attempts to be recorded", func() bool {
		a, _ := e.engine.RecentAttempts(subID(Tiki, "s", "", "a"), 10)
		return len(a) == 3
	})
	var got struct {
		Data []struct {
			Event     string `json:"event"`
			MessageID string `json:"message_id"`
			Success   bool   `json:"success"`
		} `json:"data"`
	}
	r := e.do(e.tiki, "s", "GET", "/v1/webhooks/a/attempts?limit=2", "")
	if err := json.Unmarshal([]byte(r.Body), &got); err != nil || r.Status != 200 {
		t.Fatalf("%d %s", r.Status, r.Body)
	}
	if len(got.Data) != 2 || got.Data[0].MessageID != ids[2] || got.Data[1].MessageID != ids[1] ||
		got.Data[0].Event != "a" || !got.Data[0].Success {
		t.Fatalf("attempts of a, limit 2: %s\nwant messages %s then %s", r.Body, ids[2], ids[1])
	}
	for _, bad := range []string{"abc", "0", "-1", "2.5"} {
		expect(t, e.do(e.tiki, "s", "GET", "/v1/webhooks/a/attempts?limit="+bad, ""), 400,
			`{"error":{"message":"limit must be a positive number"}}`)
		expect(t, e.do(e.doshii, "s", "GET", "/webhooks/attempts?limit="+bad, ""), 400,
			`{"message":"limit must be a positive number"}`)
	}
}

// While the store is low on disk space, writes are refused with 507 and
// Retry-After in each dialect's error shape, no verification request is
// sent for a webhook that could not be stored, and reads still work.
func TestLowSpaceRefusesWrites(t *testing.T) {
	var low atomic.Bool
	e := newEnvWritable(t, time.Second, func() error {
		if low.Load() {
			return &store.LowSpaceError{Dir: "/data", Free: 1 << 20, Min: 256 << 20}
		}
		return nil
	})
	e.tiki.Verify = true
	rcv := newReceiver(t)
	expect(t, e.do(e.tiki, "s", "POST", "/v1/webhooks", `{"uri":"`+rcv.URL+`","event":"order.status"}`), 200, "")
	verifications := len(rcv.requests())

	low.Store(true)
	tikiFull := `{"error":{"message":"` + delivery.MsgLowSpace + `"}}`
	for _, c := range []struct{ method, target, body string }{
		{"POST", "/v1/webhooks", `{"uri":"` + rcv.URL + `","event":"order.created"}`},
		{"PUT", "/v1/webhooks", `{"uri":"` + rcv.URL + `/new","event":"order.status"}`},
		{"PUT", "/v1/webhooks/credentials", `{"id":"us","secret":"s3cret"}`},
		{"POST", "/v1/webhooks/order.status/redeliver", ""},
		{"POST", "/v1/webhooks/order.status/retry", ""},
	} {
		got := e.do(e.tiki, "s", c.method, c.target, c.body)
		expect(t, got, http.StatusInsufficientStorage, tikiFull)
		if got.Header.Get("Retry-After") != "60" {
			t.Errorf("%s %s: Retry-After %q", c.method, c.target, got.Header.Get("Retry-After"))
		}
	}
	expect(t, e.do(e.doshii, "p", "POST", "/partner/v3/webhooks", `{"event":"order_created","webhookUrl":"`+rcv.URL+`"}`),
		http.StatusInsufficientStorage, `{"message":"`+delivery.MsgLowSpace+`"}`)
	if n := len(rcv.requests()); n != verifications {
		t.Fatalf("%d verification requests sent while low", n-verifications)
	}
	expect(t, e.do(e.tiki, "s", "GET", "/v1/webhooks", ""), 200,
		`{"data":[{"uri":"`+rcv.URL+`","event":"order.status"}]}`)

	low.Store(false)
	expect(t, e.do(e.tiki, "s", "POST", "/v1/webhooks", `{"uri":"`+rcv.URL+`","event":"order.created"}`), 200, "")
}

// A registration may come compressed, as an HTTP client library that
// compresses its request bodies sends it, in either dialect.
func TestCompressedRegistration(t *testing.T) {
	e := newEnv(t, time.Second)
	rcv := newReceiver(t)
	tiki := testcompress.Encode(t, "gzip", `{"uri":"`+rcv.URL+`/tiki","event":"product:request:approved"}`)
	expect(t, e.do(e.tiki, "seller-1", "POST", "/v1/webhooks", tiki, "Content-Encoding", "gzip"), 200,
		`{"event":"product:request:approved","seller_id":"seller-1","uri":"`+rcv.URL+`/tiki"}`)
	doshii := testcompress.Encode(t, "deflate", `{"event":"order_created","webhookUrl":"`+rcv.URL+`/doshii"}`)
	if got := e.do(e.doshii, "partner", "POST", "/partner/v3/webhooks", doshii, "Content-Encoding", "deflate"); got.Status != 201 && got.Status != 200 {
		t.Fatalf("deflated doshii registration: %d %s", got.Status, got.Body)
	}
	if n := len(e.engine.Subscriptions()); n != 2 {
		t.Fatalf("%d subscriptions stored, want 2", n)
	}
}

// A tenant registers at most MaxWebhooks webhooks: the one beyond is
// refused before its URL is sent a verification, other tenants are not
// affected, updates still work, and a delete makes room again.
func TestMaxWebhooks(t *testing.T) {
	e := newEnv(t, time.Second)
	rcv := newReceiver(t)
	rcv.set(204, 0)
	e.tiki.MaxWebhooks, e.tiki.Verify = 2, true
	e.doshii.MaxWebhooks = 2
	tiki := func(tenant, method, event, path string) reply {
		return e.do(e.tiki, tenant, method, "/v1/webhooks", `{"uri":"`+rcv.URL+path+`","event":"`+event+`"}`)
	}
	expect(t, tiki("s", "POST", "a", "/a"), 200, "")
	expect(t, tiki("s", "POST", "b", "/b"), 200, "")
	verifications := len(rcv.requests())
	expect(t, tiki("s", "POST", "c", "/c"), 400, `{"error":{"message":"too many webhooks: at most 2 may be registered"}}`)
	if n := len(rcv.requests()); n != verifications {
		t.Fatalf("a registration over the bound was verified (%d requests, want %d)", n, verifications)
	}
	expect(t, tiki("s", "PUT", "b", "/b2"), 200, "")
	expect(t, tiki("other", "POST", "c", "/c"), 200, "")
	expect(t, e.do(e.tiki, "s", "DELETE", "/v1/webhooks?event=a", ""), 200, "")
	expect(t, tiki("s", "POST", "c", "/c"), 200, "")

	// Doshii: location webhooks count too; Tiki's do not.
	doshii := func(event, location string) reply {
		return e.do(e.doshii, "s", "POST", "/partner/v3/webhooks", `{"event":"`+event+`","webhookUrl":"`+rcv.URL+`/d"}`,
			HeaderDoshiiLocation, location)
	}
	expect(t, doshii("order_created", ""), 200, "")
	expect(t, doshii("order_created", "loc-1"), 200, "")
	expect(t, doshii("order_created", "loc-2"), 400, `{"message":"too many webhooks: at most 2 may be registered"}`)

	// The bound holds against registrations racing each other: it is
	// counted again when each is stored.
	e.tiki.Verify = false
	var wg sync.WaitGroup
	for i := range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tiki("racer", "POST", fmt.Sprint("e", i), "/r")
		}()
	}
	wg.Wait()
	if n := e.engine.Registered(Tiki, "racer"); n != 2 {
		t.Fatalf("racing registrations stored %d webhooks, want 2", n)
	}
}

func TestMaxWebhooksDefault(t *testing.T) {
	for set, want := range map[int]int{0: DefaultMaxWebhooks, 5: 5, -1: 0} {
		if got := (&Handler{MaxWebhooks: set}).maxWebhooks(); got != want {
			t.Errorf("MaxWebhooks %d: bound %d, want %d", set, got, want)
		}
	}
}
