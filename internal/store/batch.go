package store

import "sync"

// Batcher lets concurrent writers share commits (group commit): a writer
// that finds no commit under way commits what is queued, itself included,
// while the others wait. Badger pays a round of its writer goroutine, and
// with SyncWrites an msync, per transaction; shared, that is paid once per
// batch.
//
// After its batch a committer hands the turn to the first writer still
// queued instead of committing the next batch itself: under steady load
// the queue never empties, and a committer that went on would not return
// to its own caller until the load stopped.
type Batcher[T Batched] struct {
	mu         sync.Mutex
	queued     []T
	committing bool
}

// Batched is an operation a Batcher commits; embed a Turn in it.
type Batched interface{ turnOf() *Turn }

// Turn tells a waiting operation whether a commit took it (false) or it
// is to commit the next batch (true). The zero value is ready to use, and
// may be reused once Do has returned (operations can be pooled).
type Turn struct{ c chan bool }

func (t *Turn) turnOf() *Turn { return t }

// Do queues op and returns once a commit has taken it. fit says how many
// of the queued operations, from the front, one commit takes (at least
// one); commit stores them and records each one's outcome in it.
func (b *Batcher[T]) Do(op T, fit func([]T) int, commit func([]T)) {
	t := op.turnOf()
	if t.c == nil {
		t.c = make(chan bool, 1)
	}
	b.mu.Lock()
	b.queued = append(b.queued, op)
	if b.committing {
		b.mu.Unlock()
		if lead := <-t.c; !lead {
			return
		}
		b.mu.Lock()
	}
	// op commits: it is the first queued, so the batch takes it.
	b.committing = true
	batch := b.queued[:max(1, fit(b.queued))]
	b.queued = b.queued[len(batch):]
	b.mu.Unlock()

	commit(batch)
	for _, done := range batch[1:] {
		done.turnOf().c <- false
	}
	// The queue's array still points at the batch until an append moves
	// it, and a publish carries its whole payload.
	clear(batch)

	b.mu.Lock()
	if len(b.queued) > 0 {
		b.queued[0].turnOf().c <- true
	} else {
		b.committing = false
	}
	b.mu.Unlock()
}

// Queued is how many operations wait for a commit, the one under way
// not counted.
func (b *Batcher[T]) Queued() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.queued)
}
