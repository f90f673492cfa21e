// Command crash checks that nothing acknowledged is lost when Caddy dies:
// it publishes continuously (and pushes through webhook_ingest), kills
// Caddy with SIGKILL -kills times at random moments, restarts it, and then
// checks that every message answered 202 reached the subscriber at least
// once and that every push answered 200 is still remembered by its
// client's push window. It exits 1 if anything acknowledged was lost.
//
// With -reloads it then reloads the config that many times at random
// moments under the same load (through the admin API, as `caddy reload`
// does), alternating two configs that differ in the webhooks app's
// settings. It counts the requests that failed meanwhile, beside those of
// a plain reverse_proxy route under the same load (the control), and
// exits 1 if one of ours was answered with an error. -graceful stops
// Caddy with SIGTERM instead of SIGKILL.
//
//	go run ./bench/crash -kills 3 -reloads 10 -clients 8000
package main

import (
	"flag"
	"fmt"
	"io"
	"log"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hookgate/caddy-webhook/bench/internal/caddyrun"
)

type options struct {
	kills, publishers, clients, pushers, reloads int
	graceful                                     bool
}

func main() {
	var o options
	flag.IntVar(&o.kills, "kills", 3, "how many times to kill -9 Caddy")
	flag.IntVar(&o.publishers, "publishers", 8, "concurrent publishers")
	flag.IntVar(&o.clients, "clients", 2000, "ingest clients (each pushes once, window 1h)")
	flag.IntVar(&o.pushers, "pushers", 4, "concurrent pushing clients")
	flag.IntVar(&o.reloads, "reloads", 0, "how many times to reload the config after the kills")
	flag.BoolVar(&o.graceful, "graceful", false, "stop Caddy with SIGTERM instead of SIGKILL")
	flag.Parse()

	r := start(o)
	stop, controlDone := make(chan struct{}), make(chan struct{})
	var wg sync.WaitGroup
	r.publishUntil(&wg, stop)
	r.pushUntil(&wg, stop)
	if o.reloads > 0 {
		r.controlUntil(&wg, controlDone)
	}
	restarts := r.killAndRestart()
	if o.reloads > 0 {
		r.reloadUnderLoad()
	}
	close(controlDone)
	time.Sleep(time.Second)
	close(stop)
	wg.Wait()

	missing := r.waitDelivered(2 * time.Minute)
	forgotten, nPushed := r.forgottenWindows()
	fmt.Printf("restarts: %v (until Caddy answered again)\n", roundAll(restarts))
	total, distinct := r.sink.counts()
	fmt.Printf("publish: %d acknowledged (202), %d refused while down; delivered %d distinct, missing %d, duplicates %d\n",
		r.nAcked.Load(), r.nRefused.Load(), distinct, missing, total-distinct)
	fmt.Printf("ingest: %d pushes acknowledged (200), windows forgotten after the kills: %d\n", nPushed, forgotten)
	failed := r.reportReloads()
	if missing > 0 || forgotten > 0 {
		r.reportLoss()
		failed = true
	}
	if failed {
		r.p.Stop()
		fmt.Println("data kept in", r.dir)
		os.Exit(1)
	}
	r.p.Stop() // before its data goes: badger retries a flush forever
	os.RemoveAll(r.dir)
	fmt.Println("PASS")
}

// run is one crash test: the Caddy under test, its sink and what the load
// saw acknowledged.
type run struct {
	options
	dir, bin, base string
	admin          int
	sink           *sink
	caddyfile      func(workers int) string
	p              *caddyrun.Process
	client         *http.Client

	acked            sync.Map // message id -> true
	nAcked, nRefused atomic.Int64
	pushed           sync.Map // client index -> true (answered 200)
	nextClient       atomic.Int64
	// Requests that fail while reloading are tallied apart.
	reloading                       atomic.Bool
	reloadFailures, controlFailures failures
	nControl                        atomic.Int64
}

// start builds Caddy and starts it with a subscription to a local sink, a
// publish route, an ingest route for o.clients clients and the control's
// plain proxy.
func start(o options) *run {
	dir, err := os.MkdirTemp("", "bench-crash")
	if err != nil {
		log.Fatal(err)
	}
	bin, err := caddyrun.Build(dir)
	if err != nil {
		log.Fatal(err)
	}
	r := &run{options: o, dir: dir, bin: bin, sink: newSink(), admin: caddyrun.FreePort(),
		client: &http.Client{Timeout: 5 * time.Second}}
	upstream, port := caddyrun.Upstream204(), caddyrun.FreePort()
	r.base = fmt.Sprintf("http://127.0.0.1:%d", port)
	var cl strings.Builder
	for i := 0; i < o.clients; i++ {
		fmt.Fprintf(&cl, "\t\tclient c%d key-%d\n", i, i)
	}
	r.caddyfile = func(workers int) string {
		return caddyrun.Global(r.admin, dir, fmt.Sprintf(`allow_private_targets
		workers %d
		retry 200ms 500ms 1s 1s 1s 1s 1s 1s 1s 1s
		subscription sink {
			url %s
			events *
		}`, workers, r.sink.url)) + fmt.Sprintf(`
http://127.0.0.1:%d {
	handle /publish {
		webhook_publish
	}
	handle /plain {
		reverse_proxy %s
	}
	handle /push {
		webhook_ingest {
			access_key crash-key
			interval 1h
%s		}
		reverse_proxy %s
	}
}
`, port, upstream, cl.String(), upstream)
	}
	if r.p, err = caddyrun.Start(bin, dir, r.caddyfile(16), r.base+"/publish"); err != nil {
		log.Fatal(err)
	}
	return r
}

// publishUntil publishes from o.publishers goroutines until stop closes,
// remembering every message answered 202.
func (r *run) publishUntil(wg *sync.WaitGroup, stop <-chan struct{}) {
	workers(wg, r.publishers, stop, func(g, n int) bool {
		id := fmt.Sprintf("p%d-m%d", g, n)
		res, err := r.client.Post(r.base+"/publish", "application/json",
			strings.NewReader(`{"event":"order.status","id":"`+id+`","data":{"n":`+fmt.Sprint(n)+`}}`))
		if err != nil {
			if r.reloading.Load() {
				r.reloadFailures.connFailed(err)
			}
			r.nRefused.Add(1)
			time.Sleep(20 * time.Millisecond) // Caddy is down
			return true
		}
		io.Copy(io.Discard, res.Body)
		res.Body.Close()
		if res.StatusCode == http.StatusAccepted {
			r.acked.Store(id, true)
			r.nAcked.Add(1)
		} else if r.reloading.Load() {
			r.reloadFailures.answered(fmt.Sprintf("publish: %d", res.StatusCode))
		}
		return true
	})
}

// pushUntil makes one push per client, spread over the run by several
// pushers at once, so that window saves share group commits when Caddy
// is killed.
func (r *run) pushUntil(wg *sync.WaitGroup, stop <-chan struct{}) {
	workers(wg, r.pushers, stop, func(int, int) bool {
		time.Sleep(time.Duration(r.pushers) * 2 * time.Millisecond)
		i := r.nextClient.Add(1) - 1
		if i >= int64(r.clients) {
			return false
		}
		status, body, err := push(r.client, r.base, int(i))
		switch {
		case status == 200:
			r.pushed.Store(i, true)
		case !r.reloading.Load():
		case err != nil:
			r.reloadFailures.connFailed(err)
		default:
			r.reloadFailures.answered(fmt.Sprintf("push: %d %s", status, body))
		}
		return true
	})
}

// controlUntil puts plain reverse_proxy under the same load while
// reloading, to tell what a reload does to any Caddy route from what it
// does to ours.
func (r *run) controlUntil(wg *sync.WaitGroup, done <-chan struct{}) {
	workers(wg, r.publishers, done, func(int, int) bool {
		if !r.reloading.Load() {
			time.Sleep(10 * time.Millisecond)
			return true
		}
		res, err := r.client.Post(r.base+"/plain", "application/json", strings.NewReader(`{"n":1}`))
		if err != nil {
			r.controlFailures.connFailed(err)
			return true
		}
		io.Copy(io.Discard, res.Body)
		res.Body.Close()
		r.nControl.Add(1)
		if res.StatusCode != http.StatusNoContent {
			r.controlFailures.answered(fmt.Sprintf("%d", res.StatusCode))
		}
		return true
	})
}

// killAndRestart stops Caddy o.kills times at random moments and starts
// it again; it returns how long each restart took to answer.
func (r *run) killAndRestart() []time.Duration {
	var restarts []time.Duration
	for k := 0; k < r.kills; k++ {
		time.Sleep(time.Duration(500+rand.IntN(2500)) * time.Millisecond)
		how := "kill -9"
		if r.graceful {
			how = "SIGTERM"
			r.p.Stop()
		} else {
			r.p.Kill()
		}
		fmt.Printf("%s #%d after %d acknowledged publishes\n", how, k+1, r.nAcked.Load())
		t0 := time.Now()
		var err error
		if r.p, err = caddyrun.Start(r.bin, r.dir, r.caddyfile(16), r.base+"/publish"); err != nil {
			log.Fatal(err)
		}
		restarts = append(restarts, time.Since(t0))
	}
	return restarts
}

// reloadUnderLoad reloads the config o.reloads times at random moments,
// alternating two workers settings so that the webhooks app, its engine
// and every handler are replaced each time.
func (r *run) reloadUnderLoad() {
	time.Sleep(time.Second) // past the last restart
	before, pushesBefore := r.nAcked.Load(), r.nextClient.Load()
	r.reloading.Store(true)
	var times []time.Duration
	for i := 0; i < r.reloads; i++ {
		time.Sleep(time.Duration(200+rand.IntN(800)) * time.Millisecond)
		t0 := time.Now()
		if err := reload(r.admin, r.caddyfile(8+8*(i%2))); err != nil {
			log.Fatalf("reload #%d: %v", i+1, err)
		}
		times = append(times, time.Since(t0))
	}
	time.Sleep(time.Second)
	r.reloading.Store(false)
	fmt.Printf("reloads: %v (each until the admin API answered); meanwhile %d publishes acknowledged, %d pushes made, %d plain requests answered\n",
		roundAll(times), r.nAcked.Load()-before, min(r.nextClient.Load(), int64(r.clients))-pushesBefore, r.nControl.Load())
}

// waitDelivered waits up to limit for every acknowledged message to reach
// the sink and returns how many have not.
func (r *run) waitDelivered(limit time.Duration) int {
	deadline := time.Now().Add(limit)
	for {
		missing := len(r.undelivered(-1))
		if missing == 0 || !time.Now().Before(deadline) {
			return missing
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// undelivered lists acknowledged messages the sink has not seen, at most
// limit of them (all for a negative limit).
func (r *run) undelivered(limit int) []string {
	var ids []string
	r.acked.Range(func(k, _ any) bool {
		if !r.sink.has(k.(string)) {
			ids = append(ids, k.(string))
		}
		return limit < 0 || len(ids) < limit
	})
	return ids
}

// forgottenWindows pushes again for every client whose push was answered
// 200: each must be refused for its window.
func (r *run) forgottenWindows() (forgotten, pushed int) {
	r.pushed.Range(func(k, _ any) bool {
		pushed++
		if status, body, _ := push(r.client, r.base, int(k.(int64))); status != 400 || !strings.Contains(body, "next push not allowed") {
			forgotten++
		}
		return true
	})
	return forgotten, pushed
}

// reportReloads prints the failures seen while reloading; true if one of
// our routes answered with an error.
func (r *run) reportReloads() (failed bool) {
	if r.reloads == 0 {
		return false
	}
	// A connection the old server closed as the request went out is HTTP
	// keep-alive's race, which clients of any Caddy route meet (the
	// control shows how often); a wrong answer is ours.
	fmt.Printf("reloads: our routes: %s\n", r.reloadFailures.report())
	fmt.Printf("reloads: plain reverse_proxy (control): %s\n", r.controlFailures.report())
	if r.reloadFailures.answers > 0 {
		fmt.Println("FAIL: requests to our routes were answered with an error while reloading")
		return true
	}
	return false
}

// reportLoss prints what helps find out why acknowledged data was lost.
func (r *run) reportLoss() {
	fmt.Println("missing, e.g.:", r.undelivered(5))
	for _, path := range []string{"/webhooks/subscriptions", "/webhooks/failed?limit=3"} {
		if res, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d%s", r.admin, path)); err == nil {
			b, _ := io.ReadAll(res.Body)
			res.Body.Close()
			fmt.Printf("admin %s: %s\n", path, b)
		}
	}
	fmt.Println("FAIL: acknowledged data was lost")
}

// reload loads a Caddyfile through the admin API, as `caddy reload` does;
// the API answers once the new config runs (or was rolled back).
func reload(admin int, caddyfile string) error {
	res, err := http.Post(fmt.Sprintf("http://127.0.0.1:%d/load", admin), "text/caddyfile", strings.NewReader(caddyfile))
	if err != nil {
		return err
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(res.Body)
		return fmt.Errorf("%d %s", res.StatusCode, b)
	}
	return nil
}

func roundAll(ds []time.Duration) []time.Duration {
	out := make([]time.Duration, len(ds))
	for i, d := range ds {
		out[i] = d.Round(time.Millisecond)
	}
	return out
}

// failures counts failed requests, those that got no answer (the
// connection failed) apart from those answered with an error, and keeps
// the first few answers.
type failures struct {
	mu           sync.Mutex
	conn         int
	answers      int
	firstConn    string
	answerSample []string
}

func (f *failures) connFailed(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.conn++; f.firstConn == "" {
		f.firstConn = err.Error()
	}
}

func (f *failures) answered(what string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.answers++; len(f.answerSample) < 5 {
		f.answerSample = append(f.answerSample, what)
	}
}

func (f *failures) report() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := fmt.Sprintf("%d connections failed, %d error answers", f.conn, f.answers)
	if f.firstConn != "" {
		s += fmt.Sprintf("; first connection failure: %s", f.firstConn)
	}
	if f.answers > 0 {
		s += fmt.Sprintf("; answers: %q", f.answerSample)
	}
	return s
}

// workers runs n goroutines that call work with their number and a count
// of calls until stop is closed or work returns false.
func workers(wg *sync.WaitGroup, n int, stop <-chan struct{}, work func(worker, call int) bool) {
	for w := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for call := 0; ; call++ {
				select {
				case <-stop:
					return
				default:
				}
				if !work(w, call) {
					return
				}
			}
		}()
	}
}

func push(c *http.Client, base string, i int) (int, string, error) {
	req, _ := http.NewRequest("POST", base+"/push", strings.NewReader(`{"menu":[]}`))
	req.Header.Set("Authorization", "Token crash-key")
	req.Header.Set("X-Webhook-Token", fmt.Sprintf("key-%d", i))
	res, err := c.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, string(b), nil
}

type sink struct {
	url  string
	mu   sync.Mutex
	seen map[string]int
}

func newSink() *sink {
	s := &sink{seen: map[string]int{}}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	s.url = "http://" + l.Addr().String() + "/hook"
	go http.Serve(l, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		s.mu.Lock()
		s.seen[r.Header.Get("Webhook-Id")]++
		s.mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	}))
	return s
}

func (s *sink) has(id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.seen[id] > 0
}

func (s *sink) counts() (total, distinct int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, n := range s.seen {
		total += n
	}
	return total, len(s.seen)
}
