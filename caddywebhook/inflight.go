package caddywebhook

import (
	"context"
	"math"
	"sync/atomic"
	"time"
)

// inFlight counts the requests using the store, so that the database is
// not closed under them. Caddy stops its HTTP servers before it cleans up
// the webhooks app, but with a finite grace_period it leaves the handlers
// still running behind: a push whose upstream answered after that was
// told it was accepted while its window was never saved, and the
// client's next push reached the upstream inside its window.
type inFlight struct{ n atomic.Int64 }

// closedBias is added to the count once the store closes, which makes it
// negative: an enter that finds it so backs out.
const closedBias = math.MinInt64 / 2

// enter counts one more request; false once the store is closing.
func (f *inFlight) enter() bool {
	if f.n.Add(1) < 0 {
		f.n.Add(-1)
		return false
	}
	return true
}

func (f *inFlight) leave() { f.n.Add(-1) }

// drain refuses further requests and waits until those in flight have
// ended or ctx ends; it returns how many were still in flight then.
// It runs once, when the database closes, so polling is cheap enough.
func (f *inFlight) drain(ctx context.Context) (left int64) {
	f.n.Add(closedBias)
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	for {
		if left = f.n.Load() - closedBias; left <= 0 {
			return left
		}
		select {
		case <-t.C:
		case <-ctx.Done():
			return f.n.Load() - closedBias
		}
	}
}
