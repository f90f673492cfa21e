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

func main() {
	kills := flag.Int("kills", 3, "how many times to kill -9 Caddy")
	publishers := flag.Int("publishers", 8, "concurrent publishers")
	clients := flag.Int("clients", 2000, "ingest clients (each pushes once, window 1h)")
	pushers := flag.Int("pushers", 4, "concurrent pushing clients")
	reloads := flag.Int("reloads", 0, "how many times to reload the config after the kills")
	graceful := flag.Bool("graceful", false, "stop Caddy with SIGTERM instead of SIGKILL")
	flag.Parse()

	dir, _ := os.MkdirTemp("", "bench-crash")
	bin, err := caddyrun.Build(dir)
	if err != nil {
		log.Fatal(err)
	}
	sink := newSink()
	upstream := caddyrun.Upstream204()
	port, admin := caddyrun.FreePort(), caddyrun.FreePort()
	var cl strings.Builder
	for i := 0; i < *clients; i++ {
		fmt.Fprintf(&cl, "\t\tclient c%d key-%d\n", i, i)
	}
	config := func(workers int) string {
		return caddyrun.Global(admin, dir, fmt.Sprintf(`allow_private_targets
		workers %d
		retry 200ms 500ms 1s 1s 1s 1s 1s 1s 1s 1s
		subscription sink {
			url %s
			events *
		}`, workers, sink.url)) + fmt.Sprintf(`
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
	cfg := config(16)
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	p, err := caddyrun.Start(bin, dir, cfg, base+"/publish")
	if err != nil {
		log.Fatal(err)
	}

	var acked sync.Map // message id -> true
	var nAcked, nRefused atomic.Int64
	var pushed sync.Map // client index -> true (answered 200)
	var nextClient atomic.Int64
	// Requests that fail while reloading are tallied apart.
	var reloading atomic.Bool
	var reloadFailures, controlFailures failures
	stop := make(chan struct{})
	var wg sync.WaitGroup
	client := &http.Client{Timeout: 5 * time.Second}
	workers(&wg, *publishers, stop, func(g, n int) bool {
		id := fmt.Sprintf("p%d-m%d", g, n)
		res, err := client.Post(base+"/publish", "application/json",
			strings.NewReader(`{"event":"order.status","id":"`+id+`","data":{"n":`+fmt.Sprint(n)+`}}`))
		if err != nil {
			if reloading.Load() {
				reloadFailures.connFailed(err)
			}
			nRefused.Add(1)
			time.Sleep(20 * time.Millisecond) // Caddy is down
			return true
		}
		io.Copy(io.Discard, res.Body)
		res.Body.Close()
		if res.StatusCode == http.StatusAccepted {
			acked.Store(id, true)
			nAcked.Add(1)
		} else if reloading.Load() {
			reloadFailures.answered(fmt.Sprintf("publish: %d", res.StatusCode))
		}
		return true
	})
	// One push per client, spread over the run by several pushers at once,
	// so that window saves share group commits when Caddy is killed.
	workers(&wg, *pushers, stop, func(int, int) bool {
		time.Sleep(time.Duration(*pushers) * 2 * time.Millisecond)
		i := nextClient.Add(1) - 1
		if i >= int64(*clients) {
			return false
		}
		status, body, err := push(client, base, int(i))
		switch {
		case status == 200:
			pushed.Store(i, true)
		case !reloading.Load():
		case err != nil:
			reloadFailures.connFailed(err)
		default:
			reloadFailures.answered(fmt.Sprintf("push: %d %s", status, body))
		}
		return true
	})

	// The control: plain reverse_proxy under the same load, to tell what
	// a reload does to any Caddy route from what it does to ours.
	controlDone := make(chan struct{})
	var nControl atomic.Int64
	if *reloads > 0 {
		workers(&wg, *publishers, controlDone, func(int, int) bool {
			if !reloading.Load() {
				time.Sleep(10 * time.Millisecond)
				return true
			}
			res, err := client.Post(base+"/plain", "application/json", strings.NewReader(`{"n":1}`))
			if err != nil {
				controlFailures.connFailed(err)
				return true
			}
			io.Copy(io.Discard, res.Body)
			res.Body.Close()
			nControl.Add(1)
			if res.StatusCode != http.StatusNoContent {
				controlFailures.answered(fmt.Sprintf("%d", res.StatusCode))
			}
			return true
		})
	}

	var restarts []time.Duration
	for k := 0; k < *kills; k++ {
		time.Sleep(time.Duration(500+rand.IntN(2500)) * time.Millisecond)
		how := "kill -9"
		if *graceful {
			how = "SIGTERM"
			p.Stop()
		} else {
			p.Kill()
		}
		fmt.Printf("%s #%d after %d acknowledged publishes\n", how, k+1, nAcked.Load())
		t0 := time.Now()
		if p, err = caddyrun.Start(bin, dir, cfg, base+"/publish"); err != nil {
			log.Fatal(err)
		}
		restarts = append(restarts, time.Since(t0))
	}
	var reloadTimes []time.Duration
	if *reloads > 0 {
		time.Sleep(time.Second) // past the last restart
		before, pushesBefore := nAcked.Load(), nextClient.Load()
		reloading.Store(true)
		for r := 0; r < *reloads; r++ {
			time.Sleep(time.Duration(200+rand.IntN(800)) * time.Millisecond)
			t0 := time.Now()
			if err := reload(admin, config(8+8*(r%2))); err != nil {
				log.Fatalf("reload #%d: %v", r+1, err)
			}
			reloadTimes = append(reloadTimes, time.Since(t0))
		}
		time.Sleep(time.Second)
		reloading.Store(false)
		close(controlDone)
		fmt.Printf("reloads: %v (each until the admin API answered); meanwhile %d publishes acknowledged, %d pushes made, %d plain requests answered\n",
			roundAll(reloadTimes), nAcked.Load()-before, min(nextClient.Load(), int64(*clients))-pushesBefore, nControl.Load())
	}
	time.Sleep(time.Second)
	close(stop)
	wg.Wait()
	defer p.Stop()

	// Every acknowledged message must arrive.
	deadline := time.Now().Add(2 * time.Minute)
	missing := 0
	for time.Now().Before(deadline) {
		missing = 0
		acked.Range(func(k, _ any) bool {
			if !sink.has(k.(string)) {
				missing++
			}
			return true
		})
		if missing == 0 {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	total, distinct := sink.counts()
	// Every acknowledged push must still hold its window.
	forgotten, nPushed := 0, 0
	pushed.Range(func(k, _ any) bool {
		nPushed++
		if status, body, _ := push(client, base, int(k.(int64))); status != 400 || !strings.Contains(body, "next push not allowed") {
			forgotten++
		}
		return true
	})

	fmt.Printf("restarts: %v (until Caddy answered again)\n", roundAll(restarts))
	fmt.Printf("publish: %d acknowledged (202), %d refused while down; delivered %d distinct, missing %d, duplicates %d\n",
		nAcked.Load(), nRefused.Load(), distinct, missing, total-distinct)
	fmt.Printf("ingest: %d pushes acknowledged (200), windows forgotten after the kills: %d\n", nPushed, forgotten)
	failed := false
	if *reloads > 0 {
		// A connection the old server closed as the request went out is
		// HTTP keep-alive's race, which clients of any Caddy route meet
		// (the control shows how often); a wrong answer is ours.
		fmt.Printf("reloads: our routes: %s\n", reloadFailures.report())
		fmt.Printf("reloads: plain reverse_proxy (control): %s\n", controlFailures.report())
		if reloadFailures.answers > 0 {
			fmt.Println("FAIL: requests to our routes were answered with an error while reloading")
			failed = true
		}
	}
	if missing > 0 || forgotten > 0 {
		var sample []string
		acked.Range(func(k, _ any) bool {
			if !sink.has(k.(string)) && len(sample) < 5 {
				sample = append(sample, k.(string))
			}
			return true
		})
		fmt.Println("missing, e.g.:", sample)
		for _, path := range []string{"/webhooks/subscriptions", "/webhooks/failed?limit=3"} {
			if res, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d%s", admin, path)); err == nil {
				b, _ := io.ReadAll(res.Body)
				res.Body.Close()
				fmt.Printf("admin %s: %s\n", path, b)
			}
		}
		fmt.Println("FAIL: acknowledged data was lost")
		failed = true
	}
	if failed {
		fmt.Println("data kept in", dir)
		os.Exit(1)
	}
	p.Stop() // before its data goes: badger retries a flush forever
	os.RemoveAll(dir)
	fmt.Println("PASS")
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
