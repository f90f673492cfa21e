package store

import (
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"
	"weak"
)

type testOp struct {
	Turn
	id    int
	batch int // the commit that took it, from 1
}

// waitQueued waits until n operations wait for a commit.
func waitQueued(t *testing.T, b *Batcher[*testOp], n int) {
	t.Helper()
	for deadline := time.Now().Add(15 * time.Second); b.Queued() < n; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Errorf("%d operations queued, want %d", b.Queued(), n)
			return
		}
	}
}

func all(queued []*testOp) int { return len(queued) }

// Operations that come while a commit is under way share the next one,
// split as fit says, and each learns which commit took it.
func TestBatcherSharesCommits(t *testing.T) {
	var b Batcher[*testOp]
	var mu sync.Mutex
	var sizes []int
	release := make(chan struct{})
	commit := func(batch []*testOp) {
		mu.Lock()
		sizes = append(sizes, len(batch))
		n := len(sizes)
		mu.Unlock()
		if n == 1 {
			<-release
		}
		for _, op := range batch {
			op.batch = n
		}
	}
	fitThree := func(queued []*testOp) int { return min(3, len(queued)) }

	ops := make([]*testOp, 8)
	var wg sync.WaitGroup
	for i := range ops {
		ops[i] = &testOp{id: i}
		wg.Add(1)
		go func() {
			defer wg.Done()
			b.Do(ops[i], fitThree, commit)
		}()
		if i == 0 {
			// ops[0] commits alone and holds the others back.
			for mu.Lock(); len(sizes) == 0; mu.Lock() {
				mu.Unlock()
				time.Sleep(time.Millisecond)
			}
			mu.Unlock()
		}
	}
	waitQueued(t, &b, len(ops)-1)
	close(release)
	wg.Wait()

	if want := []int{1, 3, 3, 1}; !slices.Equal(sizes, want) {
		t.Fatalf("batch sizes %v, want %v", sizes, want)
	}
	for _, op := range ops {
		if op.batch == 0 {
			t.Errorf("operation %d returned without a commit", op.id)
		}
	}
	if b.Queued() != 0 || b.committing {
		t.Fatalf("after the last commit: %d queued, committing %v", b.Queued(), b.committing)
	}
}

// A committer returns to its caller after its own batch; the next batch
// is committed by one of the operations in it. Otherwise, under steady
// load, the first caller would wait until the load stopped.
func TestBatcherHandsTheTurnOn(t *testing.T) {
	var b Batcher[*testOp]
	firstIn, firstReturned := make(chan struct{}), make(chan struct{})
	commit := func(batch []*testOp) {
		if batch[0].id == 0 {
			close(firstIn)
			waitQueued(t, &b, 1) // the second came meanwhile
			return
		}
		select {
		case <-firstReturned:
		case <-time.After(15 * time.Second):
			t.Error("the first committer went on to commit the second batch")
		}
	}
	first, second := &testOp{id: 0}, &testOp{id: 1}
	go func() {
		b.Do(first, all, commit)
		close(firstReturned)
	}()
	<-firstIn
	b.Do(second, all, commit) // queued, then given the turn
	<-firstReturned
}

// A Turn can be reused once Do has returned, as pooled operations are.
func TestBatcherReusesOperations(t *testing.T) {
	var b Batcher[*testOp]
	op := &testOp{}
	for i := range 3 {
		b.Do(op, all, func(batch []*testOp) { batch[0].batch = i + 1 })
		if op.batch != i+1 {
			t.Fatalf("use %d: committed by %d", i+1, op.batch)
		}
	}
}

// Once committed, an operation is no longer held by the Batcher: a
// publish carries its encoded payload, up to a megabyte.
func TestBatcherLetsGoOfCommittedOperations(t *testing.T) {
	var b Batcher[*testOp]
	op := &testOp{id: 1}
	b.Do(op, all, func([]*testOp) {})
	gone := weak.Make(op)
	op = nil
	runtime.GC()
	if gone.Value() != nil {
		t.Fatal("the Batcher still holds a committed operation")
	}
	runtime.KeepAlive(&b)
}
