package delivery

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Many publishers racing one subscription's lane, on the wall clock: every
// message is delivered. (This once lost messages: an entry committed while
// a lane was loading could end up behind the lane's cursor.)
func TestConcurrentPublishersAllDelivered(t *testing.T) {
	rcv := newReceiver(t, func(int, http.ResponseWriter) {})
	e := newWallClockEngine(t, Config{Subscriptions: []Subscription{sub("s", rcv.URL)}})
	const publishers, each = 8, 400
	var wg sync.WaitGroup
	for p := 0; p < publishers; p++ {
		wg.Add(1)
		go func(p int) {
			defer wg.Done()
			for i := 0; i < each; i++ {
				m := msg("x", `{}`)
				m.ID = fmt.Sprintf("p%d-%d", p, i)
				if _, err := e.Publish(m); err != nil {
					t.Error(err)
					return
				}
			}
		}(p)
	}
	wg.Wait()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) && len(rcv.got()) < publishers*each {
		time.Sleep(10 * time.Millisecond)
	}
	seen := map[string]bool{}
	for _, h := range rcv.got() {
		seen[h.Header.Get("Webhook-Id")] = true
	}
	if len(seen) != publishers*each {
		t.Fatalf("%d of %d messages delivered; queue depth %d", len(seen), publishers*each, e.QueueDepth())
	}
}

// Several subscriptions whose receivers are sometimes slow and fail each
// message a set number of times, with publishers racing, on the wall
// clock: every delivery ends delivered after exactly the attempts its
// receiver asked for (none lost, none doubled), and the queue depth
// returns to zero.
func TestMixedReceiversExactAttempts(t *testing.T) {
	const subs, publishers, each = 4, 4, 150
	type key struct{ sub, msg string }
	var mu sync.Mutex
	attempts := map[key]int{}
	// failuresFor is how many times a receiver fails a message before
	// taking it: 0, 1 or 2, from the message ID.
	failuresFor := func(id string) int { return int(id[len(id)-1]) % 3 }
	var cfgSubs []Subscription
	for s := range subs {
		name := fmt.Sprintf("s%d", s)
		var n atomic.Int64
		rcv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if n.Add(1)%10 == 0 {
				time.Sleep(30 * time.Millisecond) // a slow answer now and then
			}
			id := r.Header.Get("Webhook-Id")
			mu.Lock()
			attempts[key{name, id}]++
			k := attempts[key{name, id}]
			mu.Unlock()
			if k <= failuresFor(id) {
				w.WriteHeader(http.StatusServiceUnavailable)
				return
			}
			w.WriteHeader(http.StatusNoContent)
		}))
		t.Cleanup(rcv.Close)
		cfgSubs = append(cfgSubs, sub(name, rcv.URL))
	}
	e := newWallClockEngine(t, Config{
		EndpointConcurrency: 4, Workers: 8,
		Retry:         []time.Duration{20 * time.Millisecond, 20 * time.Millisecond, 20 * time.Millisecond},
		Subscriptions: cfgSubs,
	})
	var wg sync.WaitGroup
	var ids sync.Map
	for p := range publishers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				m := msg("x", `{}`)
				m.ID = fmt.Sprintf("p%d-%d", p, i)
				if _, err := e.Publish(m); err != nil {
					t.Error(err)
					return
				}
				ids.Store(m.ID, true)
			}
		}()
	}
	wg.Wait()
	eventually(t, "every delivery settled", func() bool { return e.QueueDepth() == 0 })
	ids.Range(func(id, _ any) bool {
		for _, s := range cfgSubs {
			d, ok, err := e.store.Delivery(deliveryID(id.(string), s.ID))
			if err != nil || !ok || d.State != StateDelivered {
				t.Fatalf("%s to %s: %+v ok=%v err=%v", id, s.Name, d, ok, err)
			}
			want := failuresFor(id.(string)) + 1
			mu.Lock()
			got := attempts[key{s.Name, id.(string)}]
			mu.Unlock()
			if got != want || d.Attempts != want {
				t.Fatalf("%s to %s: receiver saw %d attempts, record says %d, want %d", id, s.Name, got, d.Attempts, want)
			}
		}
		return true
	})
	if stored := storedQueue(t, e.store); stored != 0 {
		t.Fatalf("%d still queued in the store", stored)
	}
}
