// Package testclock is a clock for tests of ingest and delivery: it stands
// still until the test moves it, so windows and retry schedules can be
// checked without sleeping.
package testclock

import (
	"sync"
	"time"
)

// Clock satisfies ingest.Clock and delivery.Clock. It is safe for
// concurrent use: engines read it from their own goroutines.
type Clock struct {
	mu  sync.Mutex
	now time.Time
}

// New returns a clock standing at now.
func New(now time.Time) *Clock { return &Clock{now: now} }

// Now returns the clock's time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// Advance moves the clock forward by d.
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}
