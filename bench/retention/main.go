// Command retention checks that the store's size follows `retention`
// rather than every delivery ever made: the delivery engine, in process,
// delivers a steady -rate of events to a local sink for -duration with a
// short -retention, and the disk use of its badger database is printed
// every -every, with what the bottom level of badger's tree holds.
//
//	go run ./bench/retention -rate 2000 -retention 30s -duration 4m
//
// The store's upkeep (which reclaims the space of expired records) runs
// every -upkeep instead of the 5 minutes it runs at in Caddy, so that a
// few minutes show what days of traffic would.
package main

import (
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"sync/atomic"
	"time"

	"github.com/hookgate/caddy-webhook/bench/internal/caddyrun"
	"github.com/hookgate/caddy-webhook/delivery"
	"github.com/hookgate/caddy-webhook/internal/store"
)

var payload = []byte(caddyrun.OrderPayload)

func main() {
	rate := flag.Int("rate", 2000, "events published per second")
	retention := flag.Duration("retention", 30*time.Second, "the engine's retention")
	duration := flag.Duration("duration", 4*time.Minute, "how long to publish")
	every := flag.Duration("every", 20*time.Second, "how often to print the store's size")
	upkeep := flag.Duration("upkeep", 15*time.Second, "how often the store's upkeep runs")
	flag.Parse()

	var delivered atomic.Int64
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	go http.Serve(l, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		delivered.Add(1)
		w.WriteHeader(http.StatusNoContent)
	}))

	dir, err := os.MkdirTemp("", "bench-retention")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	db, err := store.Open(dir, store.Options{GCInterval: *upkeep})
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	e := delivery.NewEngine(delivery.NewStore(db.DB), nil, nil)
	err = e.Configure(delivery.Config{
		Workers: 16, AllowPrivateTargets: true, Retention: *retention,
		Subscriptions: []delivery.Subscription{{ID: delivery.StaticID("sink"), Name: "sink", URL: "http://" + l.Addr().String(), Events: []string{"*"}}},
	})
	if err != nil {
		log.Fatal(err)
	}
	if err := e.Start(); err != nil {
		log.Fatal(err)
	}
	defer e.Stop()

	fmt.Printf("%d events/s, retention %v, upkeep every %v, for %v\n", *rate, *retention, *upkeep, *duration)
	fmt.Printf("%8s %10s %10s %12s %14s\n", "time", "published", "delivered", "disk MB", "bottom MB")
	start := time.Now()
	tick := time.NewTicker(time.Second / 100)
	defer tick.Stop()
	report := time.Now().Add(*every)
	published := 0
	for time.Since(start) < *duration {
		<-tick.C
		for due := int(time.Since(start).Seconds() * float64(*rate)); published < due; published++ {
			if _, err := e.Publish(delivery.Message{Event: "order.status", Data: payload}); err != nil {
				log.Fatal(err)
			}
		}
		if time.Now().After(report) {
			report = report.Add(*every)
			fmt.Printf("%8v %10d %10d %12.1f %14.1f\n", time.Since(start).Round(time.Second), published,
				delivered.Load(), float64(db.DiskUse())/(1<<20), float64(bottomSize(db))/(1<<20))
		}
	}
}

// bottomSize is what the tables of badger's bottom level hold.
func bottomSize(db *store.DB) int64 {
	var n int64
	for _, t := range db.Tables() {
		if t.Level == db.Opts().MaxLevels-1 {
			n += int64(t.OnDiskSize)
		}
	}
	return n
}
