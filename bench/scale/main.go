// Command scale measures how the plugin grows with fan-out and backlog,
// against a real Caddy built from ./cmd/caddy:
//
//   - fan-out: one event to N subscriptions (-fanout 1000,10000,100000):
//     time to the 202, time until the last delivery, peak resident memory;
//
//   - backlog: -backlog messages queued for an endpoint that is down
//     (disabled by a 410, so its deliveries are kept, not retried), then
//     kill -9 and restart (time until Caddy serves again), then the endpoint
//     comes back (re-enabled through the admin API) and the drain is timed
//     and compared with a bare Go client loop against the same sink. The
//     backlog is backed up through the admin API before the kill, and
//     restored at the end with caddy webhooks-restore (in the cgroup,
//     under -memlimit), and Caddy started on the restored store.
//
//     go run ./bench/scale -fanout 1000,10000,100000 -backlog 1000000
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/hookgate/caddy-webhook/bench/internal/caddyrun"
	"github.com/hookgate/caddy-webhook/internal/store"
)

const payload = `{"orderId":"PHS84FJAG5U","status":"canceled","updatedAt":"2020-10-16T11:24:08.025+00:00"}`

func main() {
	fanouts := flag.String("fanout", "1000,10000,100000", "subscription counts for the fan-out runs (\"\" to skip)")
	backlog := flag.Int("backlog", 1000000, "messages in the backlog run (0 to skip)")
	c := flag.Int("c", 64, "concurrency of publishers, deliveries and the bare loop")
	flag.StringVar(&heapProfile, "heapprofile", "", "save Caddy's heap profiles here (+.queue after queueing, +.fanoutN half-way through a fan-out, as is one second into the drain)")
	flag.StringVar(&cpuProfile, "cpuprofile", "", "save 2 s of Caddy's CPU profile from the start of each fan-out here (+.fanoutN), and 5 s from the start of the backlog's drain (+.drain)")
	fanoutData := flag.Int("fanout-data", 0, "bytes of data in the fan-out event (0: a 90-byte order; at most 1,000,000, the publish limit)")
	limit := flag.Int64("memlimit", 0, "run Caddy in a memory cgroup of this many MB, as in a container of that size (Linux, root)")
	flag.Parse()
	caddyrun.MemoryLimit = *limit * 1e6
	defer caddyrun.RemoveCgroup()

	dir, _ := os.MkdirTemp("", "bench-scale")
	defer os.RemoveAll(dir)
	bin, err := caddyrun.Build(dir)
	if err != nil {
		log.Fatal(err)
	}
	s := newSink()
	if *fanouts != "" {
		data := payload
		if *fanoutData > 0 {
			data = paddedData(*fanoutData)
		}
		fmt.Printf("fan-out event data: %d bytes\n", len(data))
		fmt.Printf("%10s %12s %12s %14s %14s %11s %11s %11s\n", "fan-out", "caddy start", "RSS started", "publish (202)", "all delivered", "peak RSS", "(anon)", "data dir")
		for _, f := range strings.Split(*fanouts, ",") {
			n, _ := strconv.Atoi(f)
			fanout(bin, dir, s, n, *c, data)
		}
	}
	if *backlog > 0 {
		backlogRun(bin, dir, s, *backlog, *c)
	}
}

// paddedData is a JSON object of n bytes, for fan-outs of larger events.
func paddedData(n int) string {
	const head, tail = `{"blob":"`, `"}`
	return head + strings.Repeat("x", max(n-len(head)-len(tail), 0)) + tail
}

func fanout(bin, dir string, s *sink, n, c int, data string) {
	run, _ := os.MkdirTemp(dir, "fanout")
	var subs strings.Builder
	for i := 0; i < n; i++ {
		fmt.Fprintf(&subs, "\t\tsubscription s%d {\n\t\t\turl %s/%d\n\t\t\tevents fan.out\n\t\t}\n", i, s.url, i)
	}
	port, admin := caddyrun.FreePort(), caddyrun.FreePort()
	cfg := config(admin, run, fmt.Sprintf("workers %d\n\t\tendpoint_concurrency 1\n", c)+subs.String(), port)
	t0 := time.Now()
	p, err := caddyrun.Start(bin, run, cfg, fmt.Sprintf("http://127.0.0.1:%d/", port))
	if err != nil {
		log.Fatal(err)
	}
	started := time.Since(t0)
	defer p.Stop()
	idle := p.RSS()
	peak := watchRSS(p)
	base := s.count.Load()
	if cpuProfile != "" {
		saveCPUProfile(fmt.Sprintf("http://127.0.0.1:%d", admin), 2, fmt.Sprintf("%s.fanout%d", cpuProfile, n))
	}
	t1 := time.Now()
	caddyrun.Publish(http.DefaultClient, fmt.Sprintf("http://127.0.0.1:%d/", port), `{"event":"fan.out","data":`+data+`}`)
	accepted := time.Since(t1)
	stored := store.DiskUse(run + "/data")
	profiled := heapProfile == ""
	for s.count.Load()-base < int64(n) {
		alive(p)
		if !profiled && s.count.Load()-base >= int64(n/2) {
			os.WriteFile(fmt.Sprintf("%s.fanout%d", heapProfile, n), []byte(get(fmt.Sprintf("http://127.0.0.1:%d/debug/pprof/heap", admin))), 0o600)
			profiled = true
		}
		time.Sleep(5 * time.Millisecond)
	}
	delivered := time.Since(t1)
	rss, anon := peak()
	fmt.Printf("%10d %12v %9.0f MB %14v %14v %8.0f MB %8.0f MB %8.0f MB\n", n, started.Round(time.Millisecond), float64(idle)/1e6,
		accepted.Round(time.Microsecond), delivered.Round(time.Millisecond), float64(rss)/1e6, float64(anon)/1e6, float64(stored)/1e6)
}

var heapProfile, cpuProfile string

func backlogRun(bin, dir string, s *sink, n, c int) {
	run, _ := os.MkdirTemp(dir, "backlog")
	port, admin := caddyrun.FreePort(), caddyrun.FreePort()
	webhooks := fmt.Sprintf(`workers %d
		endpoint_concurrency %d
		subscription down {
			url %s/down
			events *
		}
`, c, c, s.url)
	cfg := config(admin, run, webhooks, port)
	url := fmt.Sprintf("http://127.0.0.1:%d/", port)
	adminURL := fmt.Sprintf("http://127.0.0.1:%d", admin)
	p, err := caddyrun.Start(bin, run, cfg, url)
	if err != nil {
		log.Fatal(err)
	}
	// The endpoint goes away: its first delivery gets 410 and disables it.
	s.gone.Store(true)
	caddyrun.Publish(http.DefaultClient, url, `{"event":"e","data":{}}`)
	for !strings.Contains(get(adminURL+"/webhooks/subscriptions/static:down"), `"disabled":true`) {
		alive(p)
		time.Sleep(10 * time.Millisecond)
	}
	peak := watchRSS(p)
	t0 := time.Now()
	caddyrun.PublishMany(url, `{"event":"e","data":`+payload+`}`, n, c)
	alive(p)
	pubRate := float64(n) / time.Since(t0).Seconds()
	if heapProfile != "" {
		os.WriteFile(heapProfile+".queue", []byte(get(adminURL+"/debug/pprof/heap")), 0o600)
	}
	rss, anon := peak()
	fmt.Printf("\nbacklog: %d messages published at %.0f/s for a disabled endpoint; peak RSS while queueing %.0f MB (anon %.0f MB); data directory %.0f MB\n",
		n, pubRate, float64(rss)/1e6, float64(anon)/1e6, float64(store.DiskUse(run+"/data"))/1e6)

	backup := takeBackup(p, adminURL, run)

	p.Kill()
	t1 := time.Now()
	if p, err = caddyrun.Start(bin, run, cfg, url); err != nil {
		log.Fatal(err)
	}
	serving := time.Since(t1)
	// Apps start in any order: the HTTP server may answer before the
	// webhooks app has opened the store; resumed is when its gauge shows
	// the backlog: n, the message that disabled the endpoint and the
	// endpoint.disabled event, which the endpoint (subscribed to *) gets
	// too.
	for depth(adminURL) != n+2 && time.Since(t1) < time.Minute {
		time.Sleep(5 * time.Millisecond)
	}
	fmt.Printf("kill -9 and restart with the backlog: serving after %v, engine resumed with %d queued after %v, RSS %.0f MB (anon %.0f MB)\n",
		serving.Round(time.Millisecond), depth(adminURL), time.Since(t1).Round(time.Millisecond),
		float64(p.RSS())/1e6, float64(p.RSSAnon())/1e6)
	defer p.Stop()

	bare := caddyrun.BareLoop(s.url+"/bare", payload, n/10, c)
	s.gone.Store(false)
	peak = watchRSS(p)
	base := s.count.Load()
	t2 := time.Now()
	post(adminURL+"/webhooks/subscriptions/static:down/enable", "")
	for s.count.Load() == base {
		alive(p)
		time.Sleep(time.Millisecond)
	}
	firstAfter := time.Since(t2)
	profiled := func() {}
	if cpuProfile != "" {
		profiled = saveCPUProfile(adminURL, 5, cpuProfile+".drain")
	}
	if heapProfile != "" {
		time.Sleep(time.Second)
		os.WriteFile(heapProfile, []byte(get(adminURL+"/debug/pprof/heap")), 0o600)
	}
	for s.count.Load()-base < int64(n) {
		alive(p)
		time.Sleep(10 * time.Millisecond)
	}
	rate := float64(n) / time.Since(t2).Seconds()
	rss, anon = peak()
	profiled()
	fmt.Printf("endpoint back: first delivery after %v; %d delivered at %.0f/s (bare loop %.0f/s, ratio %.2f); peak RSS while draining %.0f MB (anon %.0f MB); data directory %.0f MB\n",
		firstAfter.Round(time.Millisecond), n, rate, bare, rate/bare, float64(rss)/1e6, float64(anon)/1e6, float64(store.DiskUse(run+"/data"))/1e6)
	if caddyrun.MemoryLimit > 0 {
		fmt.Printf("memory cgroup of %d MB: peak charged %.0f MB, OOM kills %s\n", caddyrun.MemoryLimit/1e6,
			float64(caddyrun.CgroupPeak())/1e6, caddyrun.CgroupOOMKills())
	}
	p.Stop()
	restoreBackup(bin, dir, backup, webhooks, n+2)
}

// takeBackup saves the store's backup from the admin API in run and
// reports its size, time and what it cost Caddy in memory.
func takeBackup(p *caddyrun.Process, adminURL, run string) string {
	file := filepath.Join(run, "backup")
	before := p.RSSAnon()
	peak := watchRSS(p)
	t0 := time.Now()
	res, err := http.Get(adminURL + "/webhooks/backup")
	if err != nil {
		log.Fatal(err)
	}
	defer res.Body.Close()
	f, err := os.Create(file)
	if err != nil {
		log.Fatal(err)
	}
	size, err := io.Copy(f, res.Body)
	if err := errors.Join(err, f.Close()); err != nil || res.StatusCode != http.StatusOK {
		log.Fatalf("backup: %s, %v", res.Status, err)
	}
	alive(p)
	_, anon := peak()
	fmt.Printf("backup (GET /webhooks/backup): %.0f MB in %v; Caddy's anon memory %.0f MB before, peak %.0f MB while it ran\n",
		float64(size)/1e6, time.Since(t0).Round(time.Millisecond), float64(before)/1e6, float64(anon)/1e6)
	return file
}

// restoreBackup runs caddy webhooks-restore with the backup into a new
// storage_dir (in the memory cgroup, if any, as a restore in the
// container would run), then Caddy on the restored store, which must
// have queued as it did when the backup was taken.
func restoreBackup(bin, dir, backup, webhooks string, queued int) {
	run, _ := os.MkdirTemp(dir, "restore")
	port, admin := caddyrun.FreePort(), caddyrun.FreePort()
	cfg := config(admin, run, webhooks, port)
	cf := filepath.Join(run, "Caddyfile")
	if err := os.WriteFile(cf, []byte(cfg), 0o600); err != nil {
		log.Fatal(err)
	}
	kills := caddyrun.CgroupOOMKills()
	t0 := time.Now()
	p, err := caddyrun.Run(bin, run, "webhooks-restore", "--config", cf, "--adapter", "caddyfile", "--input", backup)
	if err != nil {
		log.Fatal(err)
	}
	peak := watchRSS(p)
	err = p.Wait()
	took := time.Since(t0)
	rss, anon := peak()
	fmt.Printf("restore (caddy webhooks-restore): %v, peak RSS %.0f MB (anon %.0f MB), data directory %.0f MB",
		took.Round(time.Millisecond), float64(rss)/1e6, float64(anon)/1e6, float64(store.DiskUse(run+"/data"))/1e6)
	if caddyrun.MemoryLimit > 0 {
		fmt.Printf(", OOM kills in the cgroup %s before, %s after", kills, caddyrun.CgroupOOMKills())
	}
	fmt.Println()
	if err != nil {
		log.Fatalf("the restore failed (%v); see %s", err, p.Log)
	}
	url := fmt.Sprintf("http://127.0.0.1:%d/", port)
	if p, err = caddyrun.Start(bin, run, cfg, url); err != nil {
		log.Fatal(err)
	}
	defer p.Stop()
	adminURL := fmt.Sprintf("http://127.0.0.1:%d", admin)
	t1 := time.Now()
	for depth(adminURL) != queued && time.Since(t1) < time.Minute {
		time.Sleep(10 * time.Millisecond)
	}
	fmt.Printf("Caddy on the restored store: %d queued (%d when the backup was taken)\n", depth(adminURL), queued)
}

// saveCPUProfile saves seconds of Caddy's CPU profile in file, in the
// background; wait returns once it is written.
func saveCPUProfile(adminURL string, seconds int, file string) (wait func()) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		os.WriteFile(file, []byte(get(fmt.Sprintf("%s/debug/pprof/profile?seconds=%d", adminURL, seconds))), 0o600)
	}()
	return func() { <-done }
}

// alive stops the run if Caddy is gone (the OOM killer, under -memlimit).
func alive(p *caddyrun.Process) {
	if p.Exited() {
		log.Fatalf("caddy exited (OOM kills in its cgroup: %q); see %s", caddyrun.CgroupOOMKills(), p.Log)
	}
}

func config(admin int, dir, webhooks string, port int) string {
	return caddyrun.Global(admin, dir, "allow_private_targets\n\t\t"+webhooks) +
		fmt.Sprintf("http://127.0.0.1:%d {\n\twebhook_publish\n}\n", port)
}

// watchRSS samples the process's memory until the returned func is called;
// it reports the peak of RSS and, separately, of its anonymous part.
func watchRSS(p *caddyrun.Process) func() (int64, int64) {
	var peak, peakAnon atomic.Int64
	stop := make(chan struct{})
	go func() {
		for {
			if r := p.RSS(); r > peak.Load() {
				peak.Store(r)
			}
			if r := p.RSSAnon(); r > peakAnon.Load() {
				peakAnon.Store(r)
			}
			select {
			case <-stop:
				return
			case <-time.After(50 * time.Millisecond):
			}
		}
	}()
	return func() (int64, int64) { close(stop); return peak.Load(), peakAnon.Load() }
}

func get(url string) string {
	res, err := http.Get(url)
	if err != nil {
		return ""
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return string(b)
}

func post(url, body string) {
	res, err := http.Post(url, "application/json", strings.NewReader(body))
	if err != nil {
		log.Fatal(err)
	}
	res.Body.Close()
}

func depth(adminURL string) int {
	v, _ := strconv.ParseFloat(metric(adminURL, "caddy_webhooks_queue_depth"), 64)
	return int(v)
}

func metric(adminURL, name string) string {
	for _, line := range strings.Split(get(adminURL+"/metrics"), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			return v
		}
	}
	return "?"
}

// sink counts deliveries; while gone it answers 410.
type sink struct {
	url   string
	count atomic.Int64
	gone  atomic.Bool
}

func newSink() *sink {
	s := &sink{}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	s.url = "http://" + l.Addr().String()
	go http.Serve(l, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		if s.gone.Load() {
			w.WriteHeader(http.StatusGone)
			return
		}
		if r.URL.Path != "/bare" {
			s.count.Add(1)
		}
		w.WriteHeader(http.StatusNoContent)
	}))
	return s
}
