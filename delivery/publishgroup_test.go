package delivery

import (
	"errors"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// holdFirstPublishCommit makes the first publish commit wait until
// queued further publishes are waiting for theirs, so that those form
// one group; then it asks fail, with the number of the commit (1, 2, …),
// whether each commit fails.
func holdFirstPublishCommit(t *testing.T, te *testEngine, queued int, fail func(commit int64) error) *atomic.Int64 {
	var commits atomic.Int64
	te.store.writeFault = func(op string) error {
		if op != "publish" {
			return nil
		}
		n := commits.Add(1)
		if n == 1 {
			deadline := time.Now().Add(15 * time.Second)
			for waiting(te.store) < queued {
				if time.Now().After(deadline) {
					t.Errorf("only %d publishes queued, want %d", waiting(te.store), queued)
					break
				}
				time.Sleep(time.Millisecond)
			}
		}
		return fail(n)
	}
	return &commits
}

func waiting(s *Store) int { return s.publishes.Queued() }

// publishAll publishes msgs at once and returns each one's error.
func publishAll(te *testEngine, msgs []Message) []error {
	errs := make([]error, len(msgs))
	var wg sync.WaitGroup
	for i, m := range msgs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, err := te.Publish(m)
			if err == nil && res.Deliveries != 2 {
				err = fmt.Errorf("publish %d: %+v", i, res)
			}
			errs[i] = err
		}()
	}
	wg.Wait()
	return errs
}

func twoSubscribersSixMessages(t *testing.T) (*testEngine, *receiver, []Message) {
	rcv := newReceiver(t, nil)
	te := newTestEngine(t, Config{Subscriptions: []Subscription{sub("a", rcv.URL), sub("b", rcv.URL)}})
	var msgs []Message
	for i := range 6 {
		msgs = append(msgs, msg("x", fmt.Sprintf(`{"i":%d}`, i)))
	}
	return te, rcv, msgs
}

// Publishes that arrive while one commits share the next transaction, and
// a repeated ID in that group is stored once.
func TestConcurrentPublishesShareATransaction(t *testing.T) {
	te, rcv, msgs := twoSubscribersSixMessages(t)
	twice := msg("x", `{"order":9}`)
	twice.ID = "order-9"
	msgs = append(msgs, twice, twice)
	commits := holdFirstPublishCommit(t, te, len(msgs)-1, func(int64) error { return nil })
	// Deliveries are answered once every publish is: the first publish's
	// delivery settled while the group is being stored conflicts with the
	// group's look at the repeated ID's records, and the group falls back
	// to a commit per publish (right, but not what this test counts).
	release := make(chan struct{})
	rcv.mu.Lock()
	rcv.respond = func(_ int, w http.ResponseWriter) {
		<-release
		w.WriteHeader(http.StatusNoContent)
	}
	rcv.mu.Unlock()

	errs := publishAll(te, msgs)
	close(release)
	for i, err := range errs {
		if err != nil {
			t.Errorf("publish %d: %v", i, err)
		}
	}
	if n := commits.Load(); n != 2 {
		t.Errorf("%d commits for %d publishes, want the first alone and the rest together", n, len(msgs))
	}
	deliveredExactly(t, te, rcv, 7*2, "order-9 once, to both subscribers")
}

// deliveredExactly waits for want deliveries and an empty queue, then
// checks that no more arrived.
func deliveredExactly(t *testing.T, te *testEngine, rcv *receiver, want int, why string) {
	t.Helper()
	eventually(t, "every delivery", func() bool { return len(rcv.got()) >= want })
	eventually(t, "an empty queue", func() bool { return storedQueue(t, te.store) == 0 && te.QueueDepth() == 0 })
	if n := len(rcv.got()); n != want {
		t.Fatalf("%d requests, want %d: %s", n, want, why)
	}
}

// When the shared transaction fails, each publish of the group is
// committed on its own and gets its own answer.
func TestFailedGroupCommitFallsBackToEachPublish(t *testing.T) {
	te, rcv, msgs := twoSubscribersSixMessages(t)
	full := errors.New("no space left on device")
	// Commit 2 is the group's; commit 3 the first publish retried alone.
	commits := holdFirstPublishCommit(t, te, len(msgs)-1, func(n int64) error {
		if n == 2 || n == 3 {
			return full
		}
		return nil
	})

	failed := 0
	for _, err := range publishAll(te, msgs) {
		switch {
		case errors.Is(err, full):
			failed++
		case err != nil:
			t.Errorf("publish: %v", err)
		}
	}
	if failed != 1 {
		t.Errorf("%d publishes failed, want the one whose own commit failed", failed)
	}
	if n := commits.Load(); n != 1+1+5 {
		t.Errorf("%d commits, want 7: the first alone, the group, then each of its 5 alone", n)
	}
	deliveredExactly(t, te, rcv, 5*2, "the failed publish stored nothing")
}

// Two messages under one ID published at once, in one group: one is
// stored, the other refused, and the stored one answers its repeats.
func TestConcurrentPublishesOfOneIDWithDifferentMessages(t *testing.T) {
	te, rcv, msgs := twoSubscribersSixMessages(t)
	first, second := msg("x", `{"order":9,"v":1}`), msg("x", `{"order":9,"v":2}`)
	first.ID, second.ID = "order-9", "order-9"
	msgs = append(msgs, first, second)
	holdFirstPublishCommit(t, te, len(msgs)-1, func(int64) error { return nil })

	errs := publishAll(te, msgs)
	for i, err := range errs[:6] {
		if err != nil {
			t.Errorf("publish %d: %v", i, err)
		}
	}
	winner := first
	switch a, b := errs[6], errs[7]; {
	case a == nil && errors.Is(b, ErrIDReused):
	case b == nil && errors.Is(a, ErrIDReused):
		winner = second
	default:
		t.Fatalf("the two order-9 publishes: %v and %v, want one stored and one ErrIDReused", a, b)
	}
	const want = 7 * 2
	eventually(t, "every delivery", func() bool { return len(rcv.got()) >= want })
	for _, r := range rcv.got() {
		if r.Header.Get("Webhook-Id") == "order-9" && r.Body != string(winner.Data) {
			t.Fatalf("order-9 delivered as %s, want the stored %s", r.Body, winner.Data)
		}
	}
	if res, err := te.Publish(winner); err != nil || !res.Duplicate {
		t.Fatalf("the stored message again: %+v %v", res, err)
	}
	if n := len(rcv.got()); n != want {
		t.Fatalf("%d requests, want %d", n, want)
	}
}
