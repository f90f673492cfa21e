package main

import (
	"fmt"
	"log"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/dgraph-io/badger/v4"

	"github.com/hookgate/caddy-webhook/bench/internal/caddyrun"
	"github.com/hookgate/caddy-webhook/delivery"
	"github.com/hookgate/caddy-webhook/internal/store"
)

// floorLoop is the bare loop over the least a delivery engine could keep
// in badger: n messages queued beforehand, read back in key order by one
// iterator, sent by c goroutines, and settled once the sink has taken
// them, the settles of whatever deliveries finished meanwhile sharing one
// transaction. It schedules nothing, retries nothing and tracks no
// endpoint's health, so what it loses against the bare loop is what the
// storage alone costs on this machine: with queueOnly, that of a durable
// queue; with engineWrites, that of storing what the engine stores.
func floorLoop(url string, n, c int, f floor) float64 {
	dir, err := os.MkdirTemp("", "bench-floor")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	db, err := store.Open(dir, store.Options{})
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	fill(db.DB, n, f.fill)

	tr := &http.Transport{MaxIdleConnsPerHost: c, MaxIdleConns: c}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr}
	queued := make(chan floorItem, c)
	sent := make(chan floorItem, c)
	settled := make(chan struct{})
	start := time.Now()
	go readQueue(db.DB, queued)
	go settleSent(db.DB, sent, settled, f.settle)
	var wg sync.WaitGroup
	for i := 0; i < c; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for item := range queued {
				caddyrun.BarePost(client, url, string(payload))
				sent <- item
			}
		}()
	}
	wg.Wait()
	close(sent)
	<-settled
	return float64(n) / time.Since(start).Seconds()
}

// The floor's keys and values have the sizes of the engine's for this
// benchmark's messages: a queue entry (the whole delivery) of 230 bytes
// under an 80-byte key, a publish record of 50 bytes under a 45-byte key,
// an attempt of 21 bytes under a 90-byte key.
const (
	floorQueue   = "delivery/q/static:sink\x00%016x\x00msg_%026d|static:sink"
	floorMessage = "delivery/msg/\x00msg_%026d"
	floorAtt     = "delivery/att/static:sink\x00%016x\x00msg_%026d|static:sink\x00%08x"
)

var (
	floorQueueValue   = make([]byte, 230)
	floorMessageValue = make([]byte, 50)
	floorAttValue     = make([]byte, 21)
)

// A floor is what is stored of a message when it is queued (fill, given
// its number) and what settling its delivery writes.
type floor struct {
	fill   func(wb *badger.WriteBatch, seq int) error
	settle floorSettle
}

// queueOnly keeps a queue entry per message and deletes it once sent.
var queueOnly = floor{
	fill: func(wb *badger.WriteBatch, seq int) error {
		return wb.Set(fmt.Appendf(nil, floorQueue, seq, seq), floorQueueValue)
	},
	settle: func(txn *badger.Txn, item floorItem) error { return txn.Delete(item.key) },
}

// engineWrites stores what the engine stores for a message published
// without an ID to one subscription (queue entry, publish record), and
// settles as the engine settles a first attempt that succeeds: the queue
// entry deleted and the attempt written, expiring after the default
// retention.
var engineWrites = floor{
	fill: func(wb *badger.WriteBatch, seq int) error {
		if err := queueOnly.fill(wb, seq); err != nil {
			return err
		}
		return wb.Set(fmt.Appendf(nil, floorMessage, seq), floorMessageValue)
	},
	settle: func(txn *badger.Txn, item floorItem) error {
		if err := queueOnly.settle(txn, item); err != nil {
			return err
		}
		att := fmt.Appendf(nil, floorAtt, time.Now().UnixNano(), item.seq, 1)
		return txn.SetEntry(badger.NewEntry(att, floorAttValue).WithTTL(delivery.DefaultRetention))
	},
}

func fill(db *badger.DB, n int, fill func(*badger.WriteBatch, int) error) {
	wb := db.NewWriteBatch()
	for i := 0; i < n; i++ {
		if err := fill(wb, i); err != nil {
			log.Fatal(err)
		}
	}
	if err := wb.Flush(); err != nil {
		log.Fatal(err)
	}
}

// floorItem is a queued message: its key and its number.
type floorItem struct {
	key []byte
	seq int
}

// floorSettle writes what settling a delivery takes.
type floorSettle func(txn *badger.Txn, item floorItem) error

// readQueue reads the queue in key order, a batch per read transaction
// as the engine does: one transaction held open over the whole drain
// would keep badger's compactions from dropping what the settles delete.
func readQueue(db *badger.DB, queued chan<- floorItem) {
	defer close(queued)
	prefix := []byte("delivery/q/")
	from, seq := prefix, 0
	for {
		var batch []floorItem
		err := db.View(func(txn *badger.Txn) error {
			opts := badger.DefaultIteratorOptions
			opts.Prefix = prefix
			it := txn.NewIterator(opts)
			defer it.Close()
			for it.Seek(from); it.Valid() && len(batch) < 256; it.Next() {
				if _, err := it.Item().ValueCopy(nil); err != nil {
					return err
				}
				batch = append(batch, floorItem{it.Item().KeyCopy(nil), seq}) // keys sort as they were numbered
				seq++
			}
			return nil
		})
		if err != nil {
			log.Fatal(err)
		}
		if len(batch) == 0 {
			return
		}
		for _, item := range batch {
			queued <- item
		}
		from = append(batch[len(batch)-1].key, 0) // the least key after it
	}
}

// settleSent commits the settles of whatever deliveries finished while the
// previous commit ran, in one transaction.
func settleSent(db *badger.DB, sent <-chan floorItem, settled chan<- struct{}, settle floorSettle) {
	defer close(settled)
	for item := range sent {
		items := []floorItem{item}
	more:
		for len(items) < 1000 {
			select {
			case it, ok := <-sent:
				if !ok {
					break more
				}
				items = append(items, it)
			default:
				break more
			}
		}
		err := db.Update(func(txn *badger.Txn) error {
			for _, it := range items {
				if err := settle(txn, it); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			log.Fatal(err)
		}
	}
}
