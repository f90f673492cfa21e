package caddywebhook

import (
	"errors"
	"math"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/hookgate/caddy-webhook/delivery"
	"github.com/hookgate/caddy-webhook/ingest"
	"github.com/hookgate/caddy-webhook/internal/store"
)

// The plugin's metrics. They outlive configs (the counters are cumulative
// for the process) and are registered in the registry of every config, so
// they appear on Caddy's /metrics beside its own.
var (
	ingestPushes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "webhooks",
		Name: "ingest_pushes_total",
		Help: "Inbound pushes by outcome (accepted, not_authorized, too_early, upstream_error, …) and webhook_ingest scope (\"\" by default).",
	}, []string{"outcome", "scope"})

	deliveryAttempts = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "webhooks",
		Name: "delivery_attempts_total",
		Help: "Delivery attempts by outcome: delivered, retrying (failed, will be retried) or failed (no retries left).",
	}, []string{"outcome"})

	attemptDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: "caddy", Subsystem: "webhooks",
		Name:    "delivery_attempt_duration_seconds",
		Help:    "Round trip of delivery attempts, by whether the receiver acknowledged.",
		Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
	}, []string{"success"})

	published = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "webhooks",
		Name: "published_messages_total",
		Help: "Messages accepted by webhook_publish (idempotent repeats excluded).",
	})

	queueDepth = engineGauge("queue_depth",
		"Deliveries waiting for a (first or next) attempt.",
		func(e *delivery.Engine) int64 { return e.QueueDepth() })

	disabledEndpoints = engineGauge("endpoints_disabled",
		"Subscriptions disabled after failing (410 Gone or disable_after).",
		func(e *delivery.Engine) int64 { return int64(e.DisabledEndpoints()) })

	pausedSubscriptions = engineGauge("subscriptions_paused",
		"Subscriptions whose deliveries pause (5 s, doubling up to 1 min) because the store failed to read their queue or to record an outcome; the error log says why.",
		func(e *delivery.Engine) int64 { return int64(e.PausedSubscriptions()) })

	storeFreeBytes = storeGauge("store_free_bytes",
		"Free space on the filesystem of storage_dir, read every 100 ms; below min_free_space new messages, registrations and pushes are refused and deliveries pause. NaN when it cannot be read.",
		func(db *store.DB) int64 { return db.FreeSpace() })

	storeBytes = storeGauge("store_bytes",
		"Disk space the store's files take in storage_dir (allocated blocks, as du counts them), read at each scrape. NaN while no store is open.",
		func(db *store.DB) int64 { return db.DiskUse() })
)

// engineGauge reads the running config's delivery engine at each scrape;
// 0 while none runs.
func engineGauge(name, help string, read func(*delivery.Engine) int64) prometheus.GaugeFunc {
	return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "caddy", Subsystem: "webhooks", Name: name, Help: help}, func() float64 {
		if o := current.Load(); o != nil {
			return float64(read(o.engine))
		}
		return 0
	})
}

// storeGauge reads the running config's store at each scrape; NaN while
// none is open or when read cannot tell (a negative result).
func storeGauge(name, help string, read func(*store.DB) int64) prometheus.GaugeFunc {
	return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "caddy", Subsystem: "webhooks", Name: name, Help: help}, func() float64 {
		if o := current.Load(); o != nil {
			if v := read(o.db); v >= 0 {
				return float64(v)
			}
		}
		return math.NaN()
	})
}

// current is the store of the running config, for the gauges and the
// admin API (which must not hold on to a config's context).
var current atomic.Pointer[openStore]

func registerMetrics(reg *prometheus.Registry) error {
	if reg == nil {
		return nil
	}
	for _, c := range []prometheus.Collector{ingestPushes, deliveryAttempts, attemptDuration, published, queueDepth, disabledEndpoints, pausedSubscriptions, storeFreeBytes, storeBytes} {
		if err := reg.Register(c); err != nil {
			var already prometheus.AlreadyRegisteredError
			if !errors.As(err, &already) {
				return err
			}
		}
	}
	return nil
}

// observeAttempt feeds the delivery metrics; installed on the engine.
func observeAttempt(a delivery.Attempt, s delivery.State) {
	outcome := "retrying"
	switch s {
	case delivery.StateDelivered:
		outcome = "delivered"
	case delivery.StateFailed:
		outcome = "failed"
	}
	deliveryAttempts.WithLabelValues(outcome).Inc()
	success := "false"
	if a.Success {
		success = "true"
	}
	attemptDuration.WithLabelValues(success).Observe(a.Duration.Seconds())
}

func observePush(o ingest.Outcome, scope string) {
	ingestPushes.WithLabelValues(string(o), scope).Inc()
}
