package main

import (
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/hookgate/caddy-webhook/bench/internal/caddyrun"
)

// caddyRun is the real-Caddy variant: Caddy built from ./cmd/caddy, events
// published over HTTP to webhook_publish, delivered to the same sink.
type caddyRun struct {
	p       *caddyrun.Process
	publish string
	admin   string
	dir     string
}

func startCaddy(s *sink, c int) *caddyRun {
	dir, _ := os.MkdirTemp("", "bench-delivery-caddy")
	bin, err := caddyrun.Build(dir)
	if err != nil {
		log.Fatal(err)
	}
	port, admin := caddyrun.FreePort(), caddyrun.FreePort()
	cfg := caddyrun.Global(admin, dir, fmt.Sprintf(`allow_private_targets
		workers %d
		endpoint_concurrency %d
		timeout 120s
		subscription sink {
			url %s
			events *
		}`, c, c, s.url)) + fmt.Sprintf("http://127.0.0.1:%d {\n\twebhook_publish\n}\n", port)
	url := fmt.Sprintf("http://127.0.0.1:%d/", port)
	p, err := caddyrun.Start(bin, dir, cfg, url)
	if err != nil {
		log.Fatal(err)
	}
	return &caddyRun{p: p, publish: url, admin: fmt.Sprintf("http://127.0.0.1:%d", admin), dir: dir}
}

func (r *caddyRun) stop() { r.p.Stop(); os.RemoveAll(r.dir) }

func (r *caddyRun) post(client *http.Client, id string) {
	body := `{"event":"order.status","data":` + string(payload) + `}`
	if id != "" {
		body = `{"event":"order.status","id":"` + id + `","data":` + string(payload) + `}`
	}
	caddyrun.Publish(client, r.publish, body)
}

// caddyDrain publishes n messages while the sink holds every request, then
// lets go and times how long Caddy takes to deliver all n.
func caddyDrain(s *sink, n, c int) float64 {
	r := startCaddy(s, c)
	defer r.stop()
	s.hold()
	base := s.count.Load()
	caddyrun.PublishMany(r.publish, `{"event":"order.status","data":`+string(payload)+`}`, n, c)
	if profile != "" {
		go saveCaddyProfile(r.admin, profile)
	}
	start, caddyCPU, selfCPU := time.Now(), r.p.CPU(), processCPU()
	s.release()
	for s.count.Load()-base < int64(n) {
		time.Sleep(time.Millisecond)
	}
	elapsed := time.Since(start)
	fmt.Printf("during the drain: Caddy used %.2f cores, this process (the sink) %.2f\n",
		float64(r.p.CPU()-caddyCPU)/float64(elapsed), float64(processCPU()-selfCPU)/float64(elapsed))
	return float64(n) / elapsed.Seconds()
}

// caddyLatency publishes at a steady rate over HTTP and measures from the
// publish request to the sink seeing the delivery.
func caddyLatency(s *sink, c, rate int, dur time.Duration) (p50, p99, pmax time.Duration, count int) {
	r := startCaddy(s, c)
	defer r.stop()
	s.track.Store(true)
	client := &http.Client{}
	sent := map[string]time.Time{}
	tick := time.NewTicker(time.Second / time.Duration(rate))
	defer tick.Stop()
	for i, end := 0, time.Now().Add(dur); time.Now().Before(end); i++ {
		<-tick.C
		id := fmt.Sprintf("lat-%d", i)
		sent[id] = time.Now()
		r.post(client, id)
	}
	return s.latencies(sent)
}

// saveCaddyProfile saves three seconds of Caddy's CPU profile, from its admin
// endpoint.
func saveCaddyProfile(admin, path string) {
	res, err := http.Get(admin + "/debug/pprof/profile?seconds=3")
	if err != nil {
		log.Print(err)
		return
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	if err := os.WriteFile(path, b, 0o600); err != nil {
		log.Print(err)
	}
}

// bareLoopProcess runs the bare loop in a child process, as Caddy runs,
// against the sink in this one.
func bareLoopProcess(url string, n, c int) float64 {
	self, err := os.Executable()
	if err != nil {
		log.Fatal(err)
	}
	out, err := exec.Command(self, "-bare-child", url, "-n", strconv.Itoa(n), "-c", strconv.Itoa(c)).Output()
	if err != nil {
		log.Fatalf("bare loop process: %v", err)
	}
	rate, err := strconv.ParseFloat(strings.TrimSpace(string(out)), 64)
	if err != nil {
		log.Fatalf("bare loop process said %q", out)
	}
	return rate
}

// processCPU is the processor time this process has used so far.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
