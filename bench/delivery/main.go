// Command delivery measures the outbound engine against a local sink, with
// a bare Go HTTP client loop against the same sink as the baseline of the
// same run:
//
//  1. throughput: a backlog of -n messages drained by the engine (-c
//     workers, all allowed on the one endpoint) vs -n POSTs by -c
//     goroutines sharing one http.Client; in-process, also -n requests
//     through the engine's Probe (its request path without the queue and
//     the store), and what the drain wrote to the disk;
//
//  2. latency: messages published at a steady -rate for -duration; the
//     time from Publish to the sink seeing the request, p50/p99/max.
//
//     go run ./bench/delivery -n 50000 -c 64 -rate 1000 -duration 10s
//
// With -caddy the bare loop also runs in a process of its own, as Caddy
// does, so that the ratio can be read without the cost of two processes.
package main

import (
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hookgate/caddy-webhook/bench/internal/caddyrun"
	"github.com/hookgate/caddy-webhook/delivery"
	"github.com/hookgate/caddy-webhook/internal/store"
)

var payload = []byte(caddyrun.OrderPayload)

func main() {
	n := flag.Int("n", 50000, "deliveries in the throughput phase")
	c := flag.Int("c", 64, "concurrency of both the engine and the bare loop")
	rate := flag.Int("rate", 1000, "events per second in the latency phase")
	dur := flag.Duration("duration", 10*time.Second, "length of the latency phase")
	cpuProfile := flag.String("cpuprofile", "", "write a CPU profile of the engine drain here")
	viaCaddy := flag.Bool("caddy", false, "run the engine inside a real Caddy built from ./cmd/caddy, publishing over HTTP")
	bareChild := flag.String("bare-child", "", "internal: run only the bare loop against this URL and print its rate")
	flag.Parse()
	profile = *cpuProfile
	if *bareChild != "" {
		fmt.Println(caddyrun.BareLoop(*bareChild, string(payload), *n, *c))
		return
	}

	sink := newSink()
	defer sink.Close()
	fmt.Printf("sink %s, n=%d, concurrency=%d, GOMAXPROCS cores=%d\n", sink.url, *n, *c, runtime.GOMAXPROCS(0))

	bare := caddyrun.BareLoop(sink.url, string(payload), *n, *c)
	fmt.Printf("bare Go client loop: %8.0f requests/s\n", bare)
	drain, lat, where := engineDrain, latency, "engine in-process"
	if *viaCaddy {
		drain, lat, where = caddyDrain, caddyLatency, "Caddy"
	} else {
		// The engine's own request path, without the queue and the store:
		// what of the gap is the request itself.
		probe := probeLoop(sink, *n, *c)
		fmt.Printf("engine's request path alone (Probe: no queue, no store): %8.0f requests/s (%.2fx the bare loop)\n", probe, probe/bare)
		// What the store alone costs: the same loop over a queue in
		// badger, settling as little as a durable queue must, then
		// writing what the engine's settle writes.
		floor := floorLoop(sink.url, *n, *c, queueOnly)
		fmt.Printf("bare loop over a badger queue, settled by deleting the entry: %8.0f requests/s (%.2fx the bare loop)\n", floor, floor/bare)
		floor = floorLoop(sink.url, *n, *c, engineWrites)
		fmt.Printf("the same, storing what the engine stores (publish record, attempt): %8.0f requests/s (%.2fx the bare loop)\n", floor, floor/bare)
	}
	engine := drain(sink, *n, *c)
	fmt.Printf("drain (%s): %8.0f deliveries/s\n", where, engine)
	fmt.Printf("ratio drain/bare:   %8.2f\n", engine/bare)
	if *viaCaddy {
		// Caddy is a process of its own, so each delivery also costs the
		// wake-ups of two schedulers; the same loop run the same way
		// shows what of the gap is that.
		sep := bareLoopProcess(sink.url, *n, *c)
		fmt.Printf("bare loop in a process of its own: %8.0f requests/s (%.2fx the in-process loop)\n", sep, sep/bare)
		fmt.Printf("ratio drain/bare in its own process: %8.2f\n", engine/sep)
	}

	p50, p99, pmax, count := lat(sink, *c, *rate, *dur)
	fmt.Printf("publish -> first attempt at %d events/s over %v (%d events): p50 %v  p99 %v  max %v\n",
		*rate, *dur, count, p50, p99, pmax)
}

var profile string

// sink acknowledges everything and notes when each Webhook-Id arrived.
// While held, requests wait.
type sink struct {
	*http.Server
	url   string
	count atomic.Int64
	mu    sync.Mutex
	seen  map[string]time.Time
	track atomic.Bool
	gate  atomic.Pointer[chan struct{}]
}

func (s *sink) hold() {
	ch := make(chan struct{})
	s.gate.Store(&ch)
}

func (s *sink) release() {
	if ch := s.gate.Swap(nil); ch != nil {
		close(*ch)
	}
}

func newSink() *sink {
	s := &sink{seen: map[string]time.Time{}}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	s.url = "http://" + l.Addr().String() + "/hook"
	s.Server = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		if ch := s.gate.Load(); ch != nil {
			<-*ch
		}
		if s.track.Load() {
			now := time.Now()
			id := r.Header.Get("Webhook-Id")
			s.mu.Lock()
			if _, dup := s.seen[id]; !dup {
				s.seen[id] = now
			}
			s.mu.Unlock()
		}
		s.count.Add(1)
		w.WriteHeader(http.StatusNoContent)
	})}
	go s.Serve(l)
	return s
}

func openEngine(s *sink, c int) (*delivery.Engine, func()) {
	dir, err := os.MkdirTemp("", "bench-delivery")
	if err != nil {
		log.Fatal(err)
	}
	db, err := store.Open(dir, store.Options{})
	if err != nil {
		log.Fatal(err)
	}
	e := delivery.NewEngine(delivery.NewStore(db.DB), nil, nil)
	err = e.Configure(delivery.Config{
		Workers: c, EndpointConcurrency: c, AllowPrivateTargets: true,
		Subscriptions: []delivery.Subscription{{ID: delivery.StaticID("sink"), Name: "sink", URL: s.url, Events: []string{"*"}}},
	})
	if err != nil {
		log.Fatal(err)
	}
	return e, func() { e.Stop(); db.Close(); os.RemoveAll(dir) }
}

// engineDrain queues n messages before the engine starts, then times the
// drain: every delivery read from badger, sent, and settled in badger.
func engineDrain(s *sink, n, c int) float64 {
	e, done := openEngine(s, c)
	defer done()
	for i := 0; i < n; i++ {
		if _, err := e.Publish(delivery.Message{Event: "order.status", Data: payload}); err != nil {
			log.Fatal(err)
		}
	}
	base := s.count.Load()
	if profile != "" {
		runtime.GC()
		if f, err := os.Create(profile + ".allocs.base"); err == nil {
			pprof.Lookup("allocs").WriteTo(f, 0)
			f.Close()
		}
		f, err := os.Create(profile)
		if err != nil {
			log.Fatal(err)
		}
		pprof.StartCPUProfile(f)
		defer pprof.StopCPUProfile()
	}
	written := bytesWritten()
	start := time.Now()
	if err := e.Start(); err != nil {
		log.Fatal(err)
	}
	for s.count.Load()-base < int64(n) {
		time.Sleep(time.Millisecond)
	}
	elapsed := time.Since(start)
	if after := bytesWritten(); written >= 0 && after >= 0 {
		fmt.Printf("written to disk during the drain: %.0f MB, %.0f bytes per delivery\n", float64(after-written)/1e6, float64(after-written)/float64(n))
	}
	if profile != "" {
		// What the drain allocated: compare with -diff_base <profile>.allocs.base.
		if f, err := os.Create(profile + ".allocs"); err == nil {
			pprof.Lookup("allocs").WriteTo(f, 0)
			f.Close()
		}
	}
	// Wait until the last settles are written so the next phase starts clean.
	for depth, _ := e.Store().QueueDepth(delivery.StaticID("sink")); depth > 0; depth, _ = e.Store().QueueDepth(delivery.StaticID("sink")) {
		time.Sleep(10 * time.Millisecond)
	}
	return float64(n) / elapsed.Seconds()
}

// probeLoop sends n requests from c goroutines through the engine's Probe:
// each built, authenticated, timed out and sent as a delivery is, but
// nothing read from or written to the queue. A probe also parses the
// URL and makes a message ID, which a delivery does not (under 1 µs).
func probeLoop(s *sink, n, c int) float64 {
	e, done := openEngine(s, c)
	defer done()
	sub, _ := e.Subscription(delivery.StaticID("sink"))
	var next atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for range c {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(n) {
				if res := e.Probe(&sub, "order.status", payload); !res.Success {
					log.Fatalf("probe: %d %s", res.Status, res.Error)
				}
			}
		}()
	}
	wg.Wait()
	return float64(n) / time.Since(start).Seconds()
}

func latency(s *sink, c, rate int, dur time.Duration) (p50, p99, pmax time.Duration, count int) {
	e, done := openEngine(s, c)
	defer done()
	if err := e.Start(); err != nil {
		log.Fatal(err)
	}
	s.track.Store(true)
	published := map[string]time.Time{}
	tick := time.NewTicker(time.Second / time.Duration(rate))
	defer tick.Stop()
	end := time.Now().Add(dur)
	for time.Now().Before(end) {
		<-tick.C
		at := time.Now()
		res, err := e.Publish(delivery.Message{Event: "order.status", Data: payload})
		if err != nil {
			log.Fatal(err)
		}
		published[res.ID] = at
	}
	return s.latencies(published)
}

// latencies waits (up to 10 s) for every sent event to reach the sink and
// summarizes sent -> arrived.
func (s *sink) latencies(sent map[string]time.Time) (p50, p99, pmax time.Duration, count int) {
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		s.mu.Lock()
		got := len(s.seen)
		s.mu.Unlock()
		if got >= len(sent) {
			break
		}
	}
	var lat []time.Duration
	s.mu.Lock()
	for id, at := range sent {
		if arrived, ok := s.seen[id]; ok {
			lat = append(lat, arrived.Sub(at))
		}
	}
	s.mu.Unlock()
	if len(lat) < len(sent) {
		log.Fatalf("only %d of %d events arrived", len(lat), len(sent))
	}
	slices.Sort(lat)
	q := func(p float64) time.Duration { return lat[int(p*float64(len(lat)-1))] }
	return q(0.5), q(0.99), lat[len(lat)-1], len(lat)
}

// bytesWritten is what this process has had written to the disk so far
// (Linux's write_bytes: the store's log, flushes and compactions), or -1
// where the kernel does not tell.
func bytesWritten() int64 {
	b, err := os.ReadFile("/proc/self/io")
	if err != nil {
		return -1
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "write_bytes: "); ok {
			if n, err := strconv.ParseInt(v, 10, 64); err == nil {
				return n
			}
		}
	}
	return -1
}
