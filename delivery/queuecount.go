package delivery

import (
	"sync"
	"sync/atomic"
)

// queueCount is the number of pending deliveries, kept in memory so that
// the queue-depth gauge needs no scan. Start seeds it from the store;
// every write that adds to the queue or takes from it applies its
// difference afterwards.
//
// The seed counts a snapshot while publishes (and discards, redeliveries)
// go on, and counting a large queue takes a while: half a second for a
// million. A write holds the read lock from its first commit to applying
// its difference, and the seed takes its snapshot under the write lock, so
// every write is either wholly in the snapshot (its difference is then
// overwritten by the seed) or wholly after it (its difference is kept):
// never counted twice, never missed.
type queueCount struct {
	mu      sync.RWMutex
	n       atomic.Int64
	seeding bool         // a seed has taken its snapshot; under mu
	since   atomic.Int64 // differences applied since that snapshot
}

func (c *queueCount) load() int64 { return c.n.Load() }

// change runs write, which changes the queue in the store and returns by
// how much, also when it fails partway, and applies the difference. write
// must not wait for another change: with a seed waiting for the write lock
// in between, neither would go on.
func (c *queueCount) change(write func() (int64, error)) error {
	c.mu.RLock()
	defer c.mu.RUnlock()
	diff, err := write()
	c.n.Add(diff)
	if c.seeding {
		c.since.Add(diff)
	}
	return err
}

// seed sets the count from the store's queue and returns the snapshot's
// count per subscription. On an error the count is left as it was.
func (c *queueCount) seed(s *Store) (map[string]int, error) {
	c.mu.Lock()
	snap := s.db.NewTransaction(false)
	c.seeding = true
	c.since.Store(0)
	c.mu.Unlock()
	defer snap.Discard()

	n, bySub, err := s.countQueued(snap)

	c.mu.Lock()
	defer c.mu.Unlock()
	c.seeding = false
	if err != nil {
		return nil, err
	}
	c.n.Store(n + c.since.Load())
	return bySub, nil
}
