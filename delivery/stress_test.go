package delivery

import (
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/hookgate/caddy-webhook/internal/store"
)

// Many publishers racing one subscription's lane, on the wall clock: every
// message is delivered. (This once lost messages: an entry committed while
// a lane was loading could end up behind the lane's cursor.)
func TestConcurrentPublishersAllDelivered(t *testing.T) {
	rcv := newReceiver(t, func(int, http.ResponseWriter) {})
	db, err := store.Open(t.TempDir(), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	e := NewEngine(NewStore(db.DB), nil, nil) // wall clock
	if err := e.Configure(Config{AllowPrivateTargets: true, Subscriptions: []Subscription{sub("s", rcv.URL)}}); err != nil {
		t.Fatal(err)
	}
	if err := e.Start(); err != nil {
		t.Fatal(err)
	}
	defer e.Stop()
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
