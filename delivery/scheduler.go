package delivery

import (
	"container/heap"
	"context"
	"sync"
	"time"
)

// scheduler wakes a subscription's queue when its next retry is due.
type scheduler struct {
	e      *Engine
	mu     sync.Mutex
	queue  wakeHeap
	next   map[string]time.Time // earliest pending wake-up per subscription
	signal chan struct{}
}

type wakeUp struct {
	at    time.Time
	subID string
}

type wakeHeap []wakeUp

func (h wakeHeap) Len() int           { return len(h) }
func (h wakeHeap) Less(i, j int) bool { return h[i].at.Before(h[j].at) }
func (h wakeHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *wakeHeap) Push(x any)        { *h = append(*h, x.(wakeUp)) }
func (h *wakeHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

func newScheduler(e *Engine) *scheduler {
	return &scheduler{e: e, next: map[string]time.Time{}, signal: make(chan struct{}, 1)}
}

// add asks for a wake-up of subID at t, unless an earlier one is pending.
func (s *scheduler) add(subID string, t time.Time) {
	s.mu.Lock()
	if cur, ok := s.next[subID]; ok && !t.Before(cur) {
		s.mu.Unlock()
		return
	}
	s.next[subID] = t
	heap.Push(&s.queue, wakeUp{at: t, subID: subID})
	s.mu.Unlock()
	s.poke()
}

// poke makes the scheduler look at its wake-ups now.
func (s *scheduler) poke() {
	select {
	case s.signal <- struct{}{}:
	default:
	}
}

func (s *scheduler) run(ctx context.Context) {
	defer s.e.wg.Done()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		due, wait := s.pop(s.e.clock.Now())
		for _, w := range due {
			s.e.wakeFrom(w.subID, w.at)
		}
		timer.Reset(wait)
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		case <-s.signal:
		}
	}
}

// pop takes the wake-ups due at now and says how long to sleep.
func (s *scheduler) pop(now time.Time) ([]wakeUp, time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var due []wakeUp
	for len(s.queue) > 0 && !s.queue[0].at.After(now) {
		w := heap.Pop(&s.queue).(wakeUp)
		if at, ok := s.next[w.subID]; ok && at.Equal(w.at) { // else superseded
			delete(s.next, w.subID)
			due = append(due, w)
		}
	}
	if len(s.queue) == 0 {
		return due, time.Hour
	}
	return due, max(s.queue[0].at.Sub(now), time.Millisecond)
}
