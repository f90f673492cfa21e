package delivery

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"sync"
	"time"
	"unsafe"
	"weak"

	"github.com/dgraph-io/badger/v4"
	"go.uber.org/zap"

	"github.com/hookgate/caddy-webhook/internal/store"
)

// A large message fanned out to several subscriptions has its payload
// stored once, under p/<ref>, instead of in each delivery's queue entry
// and failed record: a 1 MB event to 1,000 subscriptions otherwise wrote
// a gigabyte before its 202. Each delivery needing the payload holds a
// reference, pr/<ref>\x00<delivery id>: from its enqueue until it is
// delivered, or, once it failed, as long as its failed record is kept
// (the reference expires with it). The sweep removes a payload no live
// reference names.
//
// A payload is removed while a transaction adds references to it (a fan-out
// spanning several transactions, a redelivery) only if the two do not see
// each other. So every such transaction reads the payload's key and writes
// pm/<ref>, and the sweep reads pm/<ref> and deletes the payload: badger
// refuses whichever of the two commits second, and its retry sees the
// other's outcome (the sweep finds the new references; the fan-out finds
// the payload gone and stores it again).

// sharedPayloadMin is the least payload shared by a fan-out's deliveries;
// smaller ones cost less in each entry than an extra read per attempt.
const sharedPayloadMin = 2 << 10

// sharesPayload reports whether a message going to n subscriptions has its
// payload stored once.
func sharesPayload(msg *Message, n int) bool { return n >= 2 && len(msg.Data) >= sharedPayloadMin }

// payloadRefFor names a message's shared payload: derived from the tenant,
// the message ID and what the message says, so that a repeated publish
// finishing an interrupted one refers to the same payload, and a message
// reusing an ID whose publish record has expired does not.
func payloadRefFor(msg *Message) string {
	h := sha256.New()
	h.Write([]byte(msg.Tenant + "\x00" + msg.ID + "\x00"))
	h.Write(messageDigest(msg))
	return hex.EncodeToString(h.Sum(nil)[:16])
}

func payloadKey(ref string) []byte     { return []byte(prefixPayload + ref) }
func payloadMarkKey(ref string) []byte { return []byte(prefixPayMark + ref) }
func payloadRefKey(ref, did string) []byte {
	return []byte(prefixPayRef + ref + "\x00" + did)
}

// errPayloadGone is a reference whose payload is no longer stored.
var errPayloadGone = errors.New("the shared payload of this delivery is no longer stored")

// ReasonPayloadLost is the last error of a delivery failed without an
// attempt because its shared payload is no longer stored: the store was
// damaged (or a file of it removed). Sending it without would be worse.
const ReasonPayloadLost = "its payload is no longer stored (a damaged store): not sent"

// claimPayload prepares txn to add or revive references to ref: it reads
// the payload's key and marks it (see above). With data, a payload found
// missing is stored again, and stored reports it; without, a missing one
// is errPayloadGone.
func claimPayload(txn *badger.Txn, ref string, data []byte) (stored bool, err error) {
	_, err = txn.Get(payloadKey(ref))
	switch {
	case errors.Is(err, badger.ErrKeyNotFound) && data != nil:
		if err := txn.Set(payloadKey(ref), data); err != nil {
			return false, err
		}
		stored = true
	case errors.Is(err, badger.ErrKeyNotFound):
		return false, errPayloadGone
	case err != nil:
		return false, err
	}
	return stored, txn.Set(payloadMarkKey(ref), nil)
}

// loadPayload fills in the payload of a delivery that refers to one. The
// deliveries of a fan-out in flight at once share one copy: a 1 MB event
// to 1,000 subscriptions would otherwise hold a copy per attempt under way
// and leave one more per delivery to the garbage collector.
func (s *Store) loadPayload(txn *badger.Txn, d *Delivery) error {
	if d.payloadRef == "" {
		return nil
	}
	if b := s.payloads.get(d.payloadRef); b != nil {
		d.Message.Data = b
		return nil
	}
	item, err := txn.Get(payloadKey(d.payloadRef))
	if errors.Is(err, badger.ErrKeyNotFound) {
		return errPayloadGone
	}
	if err != nil {
		return err
	}
	b, err := item.ValueCopy(nil)
	if err != nil {
		return err
	}
	d.Message.Data = s.payloads.put(d.payloadRef, b)
	return nil
}

// payloadCache holds the shared payloads that deliveries in memory hold,
// and no others: a weak pointer each, so that a payload goes with the last
// delivery holding it. A payload is never changed once stored (its ref
// covers what it says), so its copies are read-only and may be shared.
type payloadCache struct{ m sync.Map } // ref -> cachedPayload

type cachedPayload struct {
	first weak.Pointer[byte]
	n     int
}

func (c *payloadCache) get(ref string) []byte {
	v, ok := c.m.Load(ref)
	if !ok {
		return nil
	}
	p := v.(cachedPayload)
	if b := p.first.Value(); b != nil {
		return unsafe.Slice(b, p.n)
	}
	c.m.CompareAndDelete(ref, v)
	return nil
}

// put caches b (not empty) under ref and returns it.
func (c *payloadCache) put(ref string, b []byte) []byte {
	c.m.Store(ref, cachedPayload{weak.Make(&b[0]), len(b)})
	return b
}

// forgetCollected drops the entries of payloads no delivery holds any more.
func (c *payloadCache) forgetCollected() {
	c.m.Range(func(ref, v any) bool {
		if v.(cachedPayload).first.Value() == nil {
			c.m.CompareAndDelete(ref, v)
		}
		return true
	})
}

// payloadSweepEvery is how often the shared payloads no delivery needs any
// more are removed.
const payloadSweepEvery = 5 * time.Minute

// sweeper runs sweepPayloads every payloadSweepEvery until ctx ends.
func (e *Engine) sweeper(ctx context.Context) {
	defer e.wg.Done()
	t := time.NewTicker(payloadSweepEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		e.store.payloads.forgetCollected()
		n, err := e.store.sweepPayloads()
		if err != nil && ctx.Err() == nil {
			e.log().Error("removing shared payloads no delivery needs", zap.Error(err))
		} else if n > 0 {
			e.log().Debug("removed shared payloads no delivery needs", zap.Int("payloads", n))
		}
	}
}

// sweepPayloads removes the shared payloads no live reference names and
// returns how many.
func (s *Store) sweepPayloads() (int, error) {
	var refs []string
	err := s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte(prefixPayload)})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			refs = append(refs, string(it.Item().Key()[len(prefixPayload):]))
		}
		return nil
	})
	removed := 0
	for _, ref := range refs {
		if err != nil {
			break
		}
		var gone bool
		err = store.Update(s.db, func(txn *badger.Txn) error {
			gone = false
			if payloadUsed(txn, ref) {
				return nil
			}
			if _, err := txn.Get(payloadMarkKey(ref)); err != nil && !errors.Is(err, badger.ErrKeyNotFound) {
				return err
			}
			if err := txn.Delete(payloadKey(ref)); err != nil {
				return err
			}
			gone = true
			return txn.Delete(payloadMarkKey(ref))
		})
		if gone {
			removed++
		}
	}
	return removed, err
}

// payloadUsed reports whether a live reference names ref.
func payloadUsed(txn *badger.Txn, ref string) bool {
	prefix := []byte(prefixPayRef + ref + "\x00")
	it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix})
	defer it.Close()
	it.Rewind()
	return it.ValidForPrefix(prefix)
}
