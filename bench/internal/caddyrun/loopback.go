package caddyrun

import (
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// syncWrites is a flag of every program whose Caddy is configured by
// Global, so that each can measure what sync_writes costs.
var syncWrites = flag.Bool("sync-writes", false, "run Caddy with the webhooks option sync_writes")

// Global is the global options block of the bench configs: admin on
// loopback, no trust store, quiet logs, and the webhooks app with its
// store in dir plus the given options (and sync_writes with -sync-writes).
func Global(adminPort int, dir, webhooks string) string {
	if *syncWrites {
		webhooks = "sync_writes\n\t\t" + webhooks
	}
	return fmt.Sprintf(`{
	admin 127.0.0.1:%d
	skip_install_trust
	log {
		level WARN
	}
	webhooks {
		storage_dir %s/data
		%s
	}
}
`, adminPort, dir, webhooks)
}

// Upstream204 serves 204 to everything on a loopback port and returns its
// address.
func Upstream204() string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	go http.Serve(l, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.WriteHeader(http.StatusNoContent)
	}))
	return l.Addr().String()
}

// BareLoop is the baseline of the delivery benchmarks: n POSTs of body to
// url with the headers of a delivery, by c goroutines sharing one client,
// as fast as they go. It returns requests per second.
func BareLoop(url, body string, n, c int) float64 {
	tr := &http.Transport{MaxIdleConnsPerHost: c, MaxIdleConns: c}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr}
	var next atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for i := 0; i < c; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(n) {
				BarePost(client, url, body)
			}
		}()
	}
	wg.Wait()
	return float64(n) / time.Since(start).Seconds()
}

// BarePost sends body to url as a delivery would be sent, with nothing
// around it; a failure is fatal.
func BarePost(client *http.Client, url, body string) {
	req, _ := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Event-Name", "order.status")
	req.Header.Set("Webhook-Id", "msg_bare")
	req.Header.Set("User-Agent", "caddy-webhook/1")
	res, err := client.Do(req)
	if err != nil {
		log.Fatal(err)
	}
	io.Copy(io.Discard, res.Body)
	res.Body.Close()
}

// Publish POSTs body to a webhook_publish url once; anything but 202 is
// fatal.
func Publish(client *http.Client, url, body string) {
	res, err := client.Post(url, "application/json", strings.NewReader(body))
	if err != nil {
		log.Fatal(err)
	}
	io.Copy(io.Discard, res.Body)
	res.Body.Close()
	if res.StatusCode != http.StatusAccepted {
		log.Fatalf("publish: %d", res.StatusCode)
	}
}

// PublishMany POSTs body to a webhook_publish url n times from c
// goroutines; anything but 202 is fatal.
func PublishMany(url, body string, n, c int) {
	tr := &http.Transport{MaxIdleConnsPerHost: c}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr}
	var next atomic.Int64
	var wg sync.WaitGroup
	for i := 0; i < c; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(n) {
				Publish(client, url, body)
			}
		}()
	}
	wg.Wait()
}
