// Command ingest measures what webhook_ingest costs in front of
// reverse_proxy: one Caddy (built from ./cmd/caddy) serves the same
// upstream on two ports, plain and behind webhook_ingest, and a Go load
// generator drives both in alternating rounds at the same concurrency.
// Every push comes from one of -clients distinct clients with no window,
// so each one is accepted and writes its window state to badger.
//
//	go run ./bench/ingest -clients 1000 -c 32 -round 5s -rounds 3
package main

import (
	"flag"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/hookgate/caddy-webhook/bench/internal/caddyrun"
)

var body = `{"menu":[{"sku":"A1","name":"Flat white","price":4.5},{"sku":"B2","name":"Croissant","price":3.2}],"updated_at":"2026-11-23T10:00:00Z"}`

func main() {
	clients := flag.Int("clients", 1000, "distinct pushing clients")
	c := flag.Int("c", 32, "concurrent requests")
	round := flag.Duration("round", 5*time.Second, "length of one measuring round")
	rounds := flag.Int("rounds", 3, "rounds per configuration, alternating")
	profile := flag.String("cpuprofile", "", "save Caddy's CPU profile of one webhook_ingest round here, and of a plain round in <file>.plain")
	flag.Parse()
	if *clients < *c {
		log.Fatal("need at least as many clients as concurrent requests")
	}

	dir, _ := os.MkdirTemp("", "bench-ingest")
	defer os.RemoveAll(dir)
	bin, err := caddyrun.Build(dir)
	if err != nil {
		log.Fatal(err)
	}
	upstream := caddyrun.Upstream204()
	plainPort, ingestPort, adminPort := caddyrun.FreePort(), caddyrun.FreePort(), caddyrun.FreePort()
	var cl strings.Builder
	for i := 0; i < *clients; i++ {
		fmt.Fprintf(&cl, "\t\tclient c%d key-%d\n", i, i)
	}
	cfg := caddyrun.Global(adminPort, dir, "") + fmt.Sprintf(`
http://127.0.0.1:%d {
	reverse_proxy %s
}
http://127.0.0.1:%d {
	webhook_ingest {
		access_key bench-access-key
%s	}
	reverse_proxy %s
}
`, plainPort, upstream, ingestPort, cl.String(), upstream)
	p, err := caddyrun.Start(bin, dir, cfg, fmt.Sprintf("http://127.0.0.1:%d/", plainPort))
	if err != nil {
		log.Fatal(err)
	}
	defer p.Stop()

	plain := fmt.Sprintf("http://127.0.0.1:%d/api/v1/webhook", plainPort)
	ingest := fmt.Sprintf("http://127.0.0.1:%d/api/v1/webhook", ingestPort)
	fmt.Printf("clients=%d concurrency=%d rounds=%d×%v, cores=%d\n", *clients, *c, *rounds, *round, runtime.GOMAXPROCS(0))
	load(plain, *c, *clients, time.Second) // warm both paths
	load(ingest, *c, *clients, time.Second)
	if *profile != "" {
		profileRound(adminPort, *profile+".plain", *round, func() { load(plain, *c, *clients, *round) })
		profileRound(adminPort, *profile, *round, func() { load(ingest, *c, *clients, *round) })
	}
	var a, b result
	for i := 0; i < *rounds; i++ {
		a.add(load(plain, *c, *clients, *round))
		b.add(load(ingest, *c, *clients, *round))
	}
	fmt.Printf("%-36s %10s %10s %10s %8s\n", "", "req/s", "p50", "p99", "errors")
	a.print("reverse_proxy")
	b.print("webhook_ingest + reverse_proxy")
	fmt.Printf("ratio: throughput %.2f×, p99 %.2f×\n", b.rate()/a.rate(), float64(b.p(0.99))/float64(a.p(0.99)))
}

// profileRound saves Caddy's CPU profile of one round of run in file.
func profileRound(adminPort int, file string, round time.Duration, run func()) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		res, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/debug/pprof/profile?seconds=%d", adminPort, int(round.Seconds())))
		if err != nil {
			log.Print(err)
			return
		}
		defer res.Body.Close()
		f, err := os.Create(file)
		if err != nil {
			log.Print(err)
			return
		}
		defer f.Close()
		io.Copy(f, res.Body)
	}()
	run()
	<-done
}

type result struct {
	n, errors int
	elapsed   time.Duration
	lat       []time.Duration
}

func (r *result) add(o result) {
	r.n += o.n
	r.errors += o.errors
	r.elapsed += o.elapsed
	r.lat = append(r.lat, o.lat...)
}

func (r *result) rate() float64 { return float64(r.n) / r.elapsed.Seconds() }

func (r *result) p(q float64) time.Duration {
	slices.Sort(r.lat)
	return r.lat[int(q*float64(len(r.lat)-1))]
}

func (r *result) print(name string) {
	fmt.Printf("%-36s %10.0f %10v %10v %8d\n", name, r.rate(), r.p(0.5).Round(time.Microsecond), r.p(0.99).Round(time.Microsecond), r.errors)
}

// load pushes for d with c workers; worker w uses clients w, w+c, … so
// that no two requests in flight belong to the same client.
func load(url string, c, clients int, d time.Duration) result {
	tr := &http.Transport{MaxIdleConnsPerHost: c, MaxIdleConns: c}
	client := &http.Client{Transport: tr}
	defer tr.CloseIdleConnections()
	var mu sync.Mutex
	var total result
	var wg sync.WaitGroup
	start := time.Now()
	end := start.Add(d)
	for w := 0; w < c; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			var r result
			perWorker := clients / c
			for j := 0; time.Now().Before(end); j++ {
				i := w + c*(j%perWorker)
				req, _ := http.NewRequest("POST", url, strings.NewReader(body))
				req.Header.Set("Content-Type", "application/json")
				req.Header.Set("Authorization", "Token bench-access-key")
				req.Header.Set("X-Webhook-Token", fmt.Sprintf("key-%d", i))
				t0 := time.Now()
				res, err := client.Do(req)
				if err != nil {
					r.errors++
					continue
				}
				io.Copy(io.Discard, res.Body)
				res.Body.Close()
				r.lat = append(r.lat, time.Since(t0))
				if res.StatusCode >= 300 {
					r.errors++
					if r.errors == 1 {
						log.Printf("%s answered %d", url, res.StatusCode)
					}
				}
				r.n++
			}
			mu.Lock()
			total.add(r)
			mu.Unlock()
		}(w)
	}
	wg.Wait()
	total.elapsed = time.Since(start)
	return total
}
