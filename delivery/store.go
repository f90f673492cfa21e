package delivery

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/dgraph-io/badger/v4"

	"github.com/hookgate/caddy-webhook/internal/store"
)

// Key layout, all under "delivery/":
//
//	sub/<id>                            registered subscription
//	d/<delivery id>                     delivery record: without the payload unless failed
//	                                    (expires after retention once settled); none for a
//	                                    queue-only delivery (Delivery.queueOnly) until it fails
//	q/<sub id>\x00<due, 16 hex>\x00<delivery id>   pending delivery, whole, in due order
//	att/<sub id>\x00<at, 16 hex>\x00<delivery id>  attempt record (expires after retention)
//	failed/<sub id>\x00<delivery id>    failed deliveries, for redelivery (expires after retention)
//	health/<sub id>                     endpoint health
//	success/<sub id>                    when a delivery to it last succeeded, stored with
//	                                    an attempt's outcome at most once a minute
//	msg/<tenant>\x00<message id>        publish record, for idempotency
//	cred/<source>\x00<tenant>           credentials a tenant granted (Tiki)
//	p/<ref>                             a large fan-out's payload, stored once (sharedPayload)
//	pr/<ref>\x00<delivery id>           a delivery needing it: pending, or failed (then
//	                                    expiring with the failed record)
//	pm/<ref>                            written by every transaction that adds or revives
//	                                    references, read by the sweep that removes p/<ref>
const (
	prefixSub     = "delivery/sub/"
	prefixD       = "delivery/d/"
	prefixQ       = "delivery/q/"
	prefixAtt     = "delivery/att/"
	prefixHealth  = "delivery/health/"
	prefixSuccess = "delivery/success/"
	prefixMsg     = "delivery/msg/"
	prefixFailed  = "delivery/failed/"
	prefixCred    = "delivery/cred/"
	prefixPayload = "delivery/p/"
	prefixPayRef  = "delivery/pr/"
	prefixPayMark = "delivery/pm/"
)

// Store keeps the delivery queue in a badger database.
type Store struct {
	db *badger.DB
	// writeFault, when set, is asked before every settle transaction
	// ("settle"), every commit of a publish ("publish") and every write of
	// an endpoint's health ("health"), and fails it with the error it
	// returns: tests use it to stand for a disk that refuses a write,
	// which a working badger cannot be made to do.
	writeFault func(op string) error
	// discarded and redelivered, when set, are called after each
	// committed batch of a discard or a redelivery: tests use them to act
	// while one is midway.
	discarded, redelivered func()
	// counting, when set, is called when the queue is counted, after the
	// snapshot is taken, and fails the count with the error it returns:
	// tests use it to publish while Start counts, and to stand for a
	// count that fails.
	counting func() error
	// writable, when set, says whether data may be added now (nil) or
	// why not; see SetWritable.
	writable func() error
	// txnSize, when set, replaces maxTxnSize: tests use it to spread a
	// few deliveries over several transactions.
	txnSize int64

	publishes store.Batcher[*pendingPublish]
	payloads  payloadCache
}

// NewStore uses db under the "delivery/" prefix.
func NewStore(db *badger.DB) *Store { return &Store{db: db} }

// SetWritable makes writes that add data ask f first and fail with its
// error: new messages, registrations, credentials, redeliveries, discards,
// and the loading of deliveries for their next attempt, whose outcome must
// then be stored. Settling attempts under way, health and deletions go
// ahead: they are small and bounded by what is in flight. Caddy passes
// the database's low-disk-space guard (store.DB.Writable). Call it before
// the engine starts.
func (s *Store) SetWritable(f func() error) { s.writable = f }

func (s *Store) canAdd() error {
	if s.writable == nil {
		return nil
	}
	return s.writable()
}

func queuePrefix(subID string) []byte { return []byte(prefixQ + subID + "\x00") }

func queueKey(subID string, due time.Time, did string) []byte {
	var ts [8]byte
	binary.BigEndian.PutUint64(ts[:], uint64(due.UnixNano()))
	return []byte(prefixQ + subID + "\x00" + hex.EncodeToString(ts[:]) + "\x00" + did)
}

func parseQueueKey(k []byte, subID string) (due time.Time, did string, ok bool) {
	rest := k[len(prefixQ)+len(subID)+1:]
	if len(rest) < 18 || rest[16] != 0 {
		return time.Time{}, "", false
	}
	var ts [8]byte
	if _, err := hex.Decode(ts[:], rest[:16]); err != nil {
		return time.Time{}, "", false
	}
	return time.Unix(0, int64(binary.BigEndian.Uint64(ts[:]))), string(rest[17:]), true
}

func attemptKey(a *Attempt) []byte {
	var ts [8]byte
	binary.BigEndian.PutUint64(ts[:], uint64(a.At.UnixNano()))
	return fmt.Appendf([]byte(prefixAtt+a.SubscriptionID+"\x00"+hex.EncodeToString(ts[:])+"\x00"+a.DeliveryID), "\x00%08x", a.N)
}

// parseAttemptKey fills in what an attempt's key holds.
func parseAttemptKey(k []byte, a *Attempt) bool {
	rest, ok := bytes.CutPrefix(k, []byte(prefixAtt))
	if !ok {
		return false
	}
	parts := bytes.Split(rest, []byte{0})
	if len(parts) != 4 || len(parts[1]) != 16 || len(parts[3]) != 8 {
		return false
	}
	var ts, n [8]byte
	if _, err := hex.Decode(ts[:], parts[1]); err != nil {
		return false
	}
	if _, err := hex.Decode(n[4:], parts[3]); err != nil {
		return false
	}
	a.SubscriptionID, a.DeliveryID = string(parts[0]), string(parts[2])
	a.At = time.Unix(0, int64(binary.BigEndian.Uint64(ts[:]))).UTC()
	a.N = int(binary.BigEndian.Uint64(n[:]))
	a.MessageID, _, _ = strings.Cut(a.DeliveryID, "|")
	return true
}

func failedKey(subID, did string) []byte { return []byte(prefixFailed + subID + "\x00" + did) }

func msgKey(tenant, id string) []byte { return []byte(prefixMsg + tenant + "\x00" + id) }

type publishRecord struct {
	Deliveries int       `json:"deliveries"`
	At         time.Time `json:"at"`
	// Digest fingerprints the message of a publish that came with its own
	// ID, so that the ID given again for another message is refused
	// instead of swallowing it. Records of earlier versions have none.
	Digest []byte `json:"digest,omitempty"`
}

// idTaken reports ErrIDReused when txn holds the publish record of
// another message under msg's ID: one committed since Publish looked, or
// one written earlier in the same transaction (a concurrent publish of the
// same ID). Without it, the later publish would skip the deliveries the
// other stored and overwrite its record.
func idTaken(txn *badger.Txn, msg *Message, digest []byte) error {
	var rec publishRecord
	found, err := getJSON(txn, msgKey(msg.Tenant, msg.ID), &rec)
	if err != nil {
		return err
	}
	if found && rec.Digest != nil && !bytes.Equal(rec.Digest, digest) {
		return ErrIDReused
	}
	return nil
}

func newPublishRecord(msg *Message, deliveries int, fresh bool, now time.Time) publishRecord {
	rec := publishRecord{Deliveries: deliveries, At: now}
	if !fresh {
		rec.Digest = messageDigest(msg)
	}
	return rec
}

// messageDigest is 128 bits of SHA-256 over what a publish says, tenant
// and ID aside (they are the record's key): enough to tell a repeated
// publish from another message under the same ID.
func messageDigest(msg *Message) []byte {
	h := sha256.New()
	for _, part := range [][]byte{[]byte(msg.Event), {0}, []byte(msg.Location), {0}, msg.Data} {
		h.Write(part)
	}
	return h.Sum(nil)[:16]
}

func getDelivery(txn *badger.Txn, did string, d *Delivery) (bool, error) {
	item, err := txn.Get([]byte(prefixD + did))
	if errors.Is(err, badger.ErrKeyNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return true, item.Value(func(b []byte) error { return decodeDelivery(b, d) })
}

func setDelivery(txn *badger.Txn, d *Delivery, ttl time.Duration) error {
	e := badger.NewEntry([]byte(prefixD+d.ID), encodeRecord(d))
	if ttl > 0 {
		e = e.WithTTL(ttl)
	}
	return txn.SetEntry(e)
}

func getJSON(txn *badger.Txn, key []byte, v any) (bool, error) {
	item, err := txn.Get(key)
	if errors.Is(err, badger.ErrKeyNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return true, item.Value(func(b []byte) error { return json.Unmarshal(b, v) })
}

func setJSON(txn *badger.Txn, key []byte, v any, ttl time.Duration) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	e := badger.NewEntry(key, b)
	if ttl > 0 {
		e = e.WithTTL(ttl)
	}
	return txn.SetEntry(e)
}

// published returns the publish record of an earlier publish with the same
// tenant and id.
func (s *Store) published(tenant, id string) (publishRecord, bool, error) {
	var rec publishRecord
	found, err := s.viewJSON(msgKey(tenant, id), &rec)
	return rec, found, err
}

// viewJSON reads one JSON value in a transaction of its own.
func (s *Store) viewJSON(key []byte, v any) (found bool, err error) {
	err = s.db.View(func(txn *badger.Txn) error {
		found, err = getJSON(txn, key, v)
		return err
	})
	return found, err
}

// enqueue stores one delivery per subscription and then the publish record,
// and returns how many deliveries it stored, also when it fails. A publish
// that fits one transaction shares it with concurrent publishes (see
// publishGroup). Larger fan-outs span several transactions, each delivery
// whole in one; delivery IDs are deterministic and existing deliveries are
// left alone, so repeating an interrupted enqueue completes it without
// duplicates. A fresh message (its ID just made) has none to look for.
func (s *Store) enqueue(msg Message, subs []*Subscription, fresh bool, now time.Time, retention time.Duration) (stored int, err error) {
	if sharesPayload(&msg, len(subs)) {
		return s.enqueueFanOut(msg, subs, fresh, now, retention)
	}
	p, err := s.newPendingPublish(msg, subs, fresh, now, retention)
	if err != nil {
		return 0, err
	}
	if p != nil {
		return s.enqueueGrouped(p)
	}
	return s.enqueueFanOut(msg, subs, fresh, now, retention)
}

// enqueueFanOut stores a publish too large for one transaction.
func (s *Store) enqueueFanOut(msg Message, subs []*Subscription, fresh bool, now time.Time, retention time.Duration) (stored int, err error) {
	// A transaction that looked for existing deliveries conflicts with a
	// concurrent write of one (the same message published twice at once,
	// or one stored by an interrupted publish being settled): repeating
	// the enqueue finds it and completes the rest.
	err = store.RetryConflicts(func() error {
		n, err := s.enqueueOnce(msg, subs, fresh, now, retention)
		stored, fresh = stored+n, false
		return err
	})
	return stored, err
}

func (s *Store) enqueueOnce(msg Message, subs []*Subscription, fresh bool, now time.Time, retention time.Duration) (stored int, err error) {
	var ref string
	if sharesPayload(&msg, len(subs)) {
		ref = payloadRefFor(&msg)
	}
	w := newFanOutWriter(s.db, s.maxTxnSize(), ref, msg.Data)
	w.fault = s.writeFault
	defer w.discard()
	rec := newPublishRecord(&msg, len(subs), fresh, now)
	if !fresh {
		if err := idTaken(w.txn, &msg, rec.Digest); err != nil {
			return 0, err
		}
	}
	for _, sub := range subs {
		d := &Delivery{
			ID: deliveryID(msg.ID, sub.ID), SubscriptionID: sub.ID, Message: msg,
			State: StatePending, NextAttempt: now, CreatedAt: now, UpdatedAt: now,
			payloadRef: ref, queueOnly: fresh,
		}
		if !fresh {
			if exists, err := w.exists(d.ID); err != nil || exists {
				if err != nil {
					return w.stored, err
				}
				continue // stored by an earlier, interrupted publish
			}
		}
		if err := w.add(d); err != nil {
			return w.stored, err
		}
	}
	if err := setJSON(w.txn, msgKey(msg.Tenant, msg.ID), rec, retention); err != nil {
		return w.stored, err
	}
	err = w.commit()
	return w.stored, err
}

// fanOutWriter adds deliveries in as few transactions as badger allows,
// never splitting one delivery's entries across two: a queue entry without
// its record (or the reverse) after a crash would be delivered twice (or
// never). With a shared payload, every transaction that adds deliveries
// claims it (see claimPayload), and the first stores it.
type fanOutWriter struct {
	db      *badger.DB
	txn     *badger.Txn
	inTxn   []entries
	size    int64
	maxSize int64
	stored  int                // deliveries committed
	fault   func(string) error // Store.writeFault
	ref     string             // the shared payload, if any
	data    []byte
	claimed bool // txn has claimed it
}

func newFanOutWriter(db *badger.DB, maxSize int64, ref string, data []byte) *fanOutWriter {
	w := &fanOutWriter{db: db, maxSize: maxSize, ref: ref, data: data}
	w.begin()
	return w
}

// begin starts the next transaction.
func (w *fanOutWriter) begin() {
	w.txn, w.inTxn, w.size, w.claimed = w.db.NewTransaction(true), w.inTxn[:0], 0, false
}

func (w *fanOutWriter) exists(did string) (bool, error) {
	_, err := w.txn.Get([]byte(prefixD + did))
	if errors.Is(err, badger.ErrKeyNotFound) {
		return false, nil
	}
	return err == nil, err
}

func (w *fanOutWriter) add(d *Delivery) error {
	e := pendingEntries(d)
	if len(w.inTxn) > 0 && w.size+e.size() > w.maxSize {
		if err := w.commit(); err != nil {
			return err
		}
	}
	err := w.put(e)
	if errors.Is(err, badger.ErrTxnTooBig) && len(w.inTxn) > 0 {
		// The estimate fell short: commit the others without this one.
		if err = w.redo(); err == nil {
			err = w.put(e)
		}
	}
	if err != nil {
		return err
	}
	w.inTxn = append(w.inTxn, e)
	w.size += e.size()
	return nil
}

// put writes e into the transaction, claiming the shared payload first.
func (w *fanOutWriter) put(e entries) error {
	if w.ref != "" && !w.claimed {
		stored, err := claimPayload(w.txn, w.ref, w.data)
		if err != nil {
			return err
		}
		if stored {
			w.size += int64(len(prefixPayload)+len(w.ref)+len(w.data)) + 16
		}
		w.claimed = true
	}
	return e.put(w.txn)
}

// redo commits the deliveries added so far in a fresh transaction (the
// current one holds part of a delivery that did not fit).
func (w *fanOutWriter) redo() error {
	w.txn.Discard()
	added := append([]entries(nil), w.inTxn...)
	w.begin()
	for _, e := range added {
		if err := w.put(e); err != nil {
			return err
		}
		w.inTxn = append(w.inTxn, e)
	}
	return w.commit()
}

func (w *fanOutWriter) commit() error {
	if w.fault != nil {
		if err := w.fault("publish"); err != nil {
			return fmt.Errorf("storing deliveries: %w", err)
		}
	}
	if err := w.txn.Commit(); err != nil {
		return fmt.Errorf("storing deliveries: %w", err)
	}
	w.stored += len(w.inTxn)
	w.begin()
	return nil
}

func (w *fanOutWriter) discard() { w.txn.Discard() }

// entries are one delivery's writes: its queue entry, which carries the
// whole delivery so that an attempt needs no other read (but that of a
// shared payload), its record, without the payload, unless it is
// queue-only, and its reference to a shared payload, if it has one.
type entries struct{ queueKey, queueValue, recordKey, recordValue, refKey []byte }

func pendingEntries(d *Delivery) entries {
	whole := encodeDelivery(d)
	e := entries{queueKey: queueKey(d.SubscriptionID, d.NextAttempt, d.ID), queueValue: whole}
	if !d.queueOnly {
		// The payload is the end of the encoding: the record is what
		// precedes it (without the queue-only flag, as d has none).
		n := len(whole) - storedPayload(d)
		e.recordKey, e.recordValue = []byte(prefixD+d.ID), whole[:n:n]
	}
	if d.payloadRef != "" {
		e.refKey = payloadRefKey(d.payloadRef, d.ID)
	}
	return e
}

// size is what badger counts against a transaction's limit, with room
// for its per-entry metadata.
func (e entries) size() int64 {
	return int64(len(e.queueKey)+len(e.queueValue)+len(e.recordKey)+len(e.recordValue)+len(e.refKey)) + 3*16
}

func (e entries) put(txn *badger.Txn) error {
	if err := txn.Set(e.queueKey, e.queueValue); err != nil {
		return err
	}
	if e.refKey != nil {
		if err := txn.Set(e.refKey, nil); err != nil {
			return err
		}
	}
	if e.recordKey == nil {
		return nil
	}
	return txn.Set(e.recordKey, e.recordValue)
}

// dueSet is what one read of a subscription's queue found.
type dueSet struct {
	out []Delivery // due, to be attempted
	// lost are due deliveries whose shared payload is no longer stored.
	lost []Delivery
	// orphans are queue entries of the old format (the delivery kept
	// only in its record) whose record is gone.
	orphans [][]byte
	next    time.Time // when the first entry after out comes due; zero if none
}

// due reads up to limit pending deliveries of a subscription whose time
// has come, starting at from. Settled deliveries leave tombstones at the
// front of the index; starting from the caller's cursor skips them.
func (s *Store) due(subID string, from, now time.Time, skip map[string]bool, limit int) (set dueSet, err error) {
	err = s.db.View(func(txn *badger.Txn) error {
		prefix := queuePrefix(subID)
		it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix})
		defer it.Close()
		start := prefix
		if !from.IsZero() {
			start = queueKey(subID, from, "")
		}
		for it.Seek(start); it.ValidForPrefix(prefix); it.Next() {
			at, did, ok := parseQueueKey(it.Item().Key(), subID)
			if !ok {
				continue
			}
			if skip[did] {
				continue
			}
			if at.After(now) || len(set.out) >= limit {
				set.next = at
				return nil
			}
			var d Delivery
			found, err := queuedDelivery(txn, it.Item(), did, &d)
			if err != nil {
				return err
			}
			if !found {
				set.orphans = append(set.orphans, it.Item().KeyCopy(nil))
				continue
			}
			d.NextAttempt = at
			if err := s.loadPayload(txn, &d); errors.Is(err, errPayloadGone) {
				set.lost = append(set.lost, d)
				continue
			} else if err != nil {
				return err
			}
			set.out = append(set.out, d)
		}
		return nil
	})
	return set, err
}

// dropOrphans deletes the orphaned queue entries due found and returns
// how many were still there to delete.
func (s *Store) dropOrphans(keys [][]byte) (n int, err error) {
	err = store.Update(s.db, func(txn *badger.Txn) error {
		n = 0
		for _, k := range keys {
			item, err := txn.Get(k)
			if errors.Is(err, badger.ErrKeyNotFound) || (err == nil && item.ValueSize() > 0) {
				continue // gone, or written again since with its delivery
			} else if err != nil {
				return err
			}
			if err := txn.Delete(k); err != nil {
				return err
			}
			n++
		}
		return nil
	})
	return n, err
}

// failLost fails queued deliveries whose shared payload is no longer
// stored, with ReasonPayloadLost, and returns how many it failed (those
// still queued).
func (s *Store) failLost(lost []Delivery, now time.Time, retention time.Duration) (n int, err error) {
	err = store.Update(s.db, func(txn *badger.Txn) error {
		n = 0
		for _, d := range lost {
			key := queueKey(d.SubscriptionID, d.NextAttempt, d.ID)
			if _, err := txn.Get(key); errors.Is(err, badger.ErrKeyNotFound) {
				continue
			} else if err != nil {
				return err
			}
			if err := txn.Delete(key); err != nil {
				return err
			}
			d.State, d.NextAttempt, d.LastError, d.UpdatedAt = StateFailed, time.Time{}, ReasonPayloadLost, now
			if err := putFailed(txn, &d, retention); err != nil {
				return err
			}
			n++
		}
		return nil
	})
	return n, err
}

// queuedDelivery reads the delivery a queue entry stands for: from the
// entry itself, or, for entries written by earlier versions (empty), from
// its record; found is false for such an entry whose record is gone.
func queuedDelivery(txn *badger.Txn, item *badger.Item, did string, d *Delivery) (found bool, err error) {
	err = item.Value(func(b []byte) error {
		if len(b) > 0 {
			found = true
			return decodeDelivery(b, d)
		}
		return nil
	})
	if found || err != nil {
		return found, err
	}
	return getDelivery(txn, did, d)
}

// settled is the outcome of one attempt, ready to be stored.
type settled struct {
	d        Delivery
	queuedAt time.Time
	att      Attempt
	// storeSuccess: store the attempt's time as the endpoint's last
	// success (see recordHealth).
	storeSuccess bool
}

// settle stores attempt outcomes, several per transaction: the attempt
// record, the delivery and its place in the queue (gone once the delivery
// is final, when the delivery itself starts to expire). Each outcome is
// whole in one transaction: when one does not fit, the transaction is
// dropped and made again without it, since committing it would store half
// of that outcome (its old queue entry deleted, the new one missing).
// stored counts the outcomes from the front of batch that were stored,
// also when a later transaction failed.
func (s *Store) settle(batch []settled, retention time.Duration) (stored int, err error) {
	for stored < len(batch) {
		if s.writeFault != nil {
			if err := s.writeFault("settle"); err != nil {
				return stored, err
			}
		}
		n, err := s.settleFitting(batch[stored:], retention)
		if err != nil {
			return stored, err
		}
		stored += n
	}
	return stored, nil
}

// errTxnFull drops a settle transaction that ran out of room.
var errTxnFull = errors.New("settle transaction full")

// settleFitting commits as many outcomes from the front of batch as fit in
// one transaction, at least one, and returns how many.
func (s *Store) settleFitting(batch []settled, retention time.Duration) (int, error) {
	for limit := len(batch); ; {
		n := 0
		err := store.Update(s.db, func(txn *badger.Txn) error {
			for n = 0; n < limit; n++ {
				err := settleOne(txn, &batch[n], retention)
				if errors.Is(err, badger.ErrTxnTooBig) && n > 0 {
					return errTxnFull
				}
				if err != nil {
					return err
				}
			}
			return nil
		})
		if !errors.Is(err, errTxnFull) {
			return n, err
		}
		limit = n
	}
}

func settleOne(txn *badger.Txn, st *settled, retention time.Duration) error {
	d := &st.d
	if err := txn.Delete(queueKey(d.SubscriptionID, st.queuedAt, d.ID)); err != nil {
		return err
	}
	att := badger.NewEntry(attemptKey(&st.att), encodeAttempt(&st.att))
	if retention > 0 {
		att = att.WithTTL(retention)
	}
	if err := txn.SetEntry(att); err != nil {
		return err
	}
	if st.storeSuccess {
		var at [8]byte
		binary.BigEndian.PutUint64(at[:], uint64(st.att.At.UnixNano()))
		if err := txn.Set([]byte(prefixSuccess+d.SubscriptionID), at[:]); err != nil {
			return err
		}
	}
	switch d.State {
	case StatePending:
		return pendingEntries(d).put(txn)
	case StateFailed:
		return putFailed(txn, d, retention)
	}
	// Delivered: nothing sends it again. A record stays, without the
	// payload, so that a publish of the same ID that an interruption cut
	// short, repeated, does not queue it again (see pendingPublish.put).
	if d.payloadRef != "" {
		if err := txn.Delete(payloadRefKey(d.payloadRef, d.ID)); err != nil {
			return err
		}
		d.payloadRef = ""
	}
	if d.queueOnly {
		return nil // nothing looks it up: the attempt is its trace
	}
	d.Message.Data = nil
	return setDelivery(txn, d, retention)
}

// putFailed stores a failed delivery whole, with its payload (or its
// reference to a shared one), for a redelivery, and lists it among the
// failed ones. All three entries expire together.
func putFailed(txn *badger.Txn, d *Delivery, retention time.Duration) error {
	expires := uint64(time.Now().Add(retention).Unix())
	keys := [][]byte{failedKey(d.SubscriptionID, d.ID)}
	if d.payloadRef != "" {
		keys = append(keys, payloadRefKey(d.payloadRef, d.ID))
	}
	for _, k := range keys {
		e := badger.NewEntry(k, nil)
		e.ExpiresAt = expires
		if err := txn.SetEntry(e); err != nil {
			return err
		}
	}
	e := badger.NewEntry([]byte(prefixD+d.ID), encodeRecord(d))
	e.ExpiresAt = expires
	return txn.SetEntry(e)
}

// Subscriptions returns every registered subscription.
func (s *Store) Subscriptions() ([]Subscription, error) {
	var out []Subscription
	err := s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte(prefixSub), PrefetchValues: true})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			var sub Subscription
			if err := it.Item().Value(func(b []byte) error { return json.Unmarshal(b, &sub) }); err != nil {
				return err
			}
			out = append(out, sub)
		}
		return nil
	})
	return out, err
}

// putSubscription stores sub and, when not nil, its new health record.
func (s *Store) putSubscription(sub *Subscription, health *Health) error {
	return store.Update(s.db, func(txn *badger.Txn) error {
		if health != nil {
			if err := setHealth(txn, sub.ID, *health); err != nil {
				return err
			}
		}
		return setJSON(txn, []byte(prefixSub+sub.ID), sub, 0)
	})
}

// deleteSubscription removes a registration with its health record: a
// registration made again starts with a clean one anyway, so the record
// would only take room.
func (s *Store) deleteSubscription(id string) error {
	return store.Update(s.db, func(txn *badger.Txn) error {
		for _, prefix := range []string{prefixSub, prefixHealth, prefixSuccess} {
			if err := txn.Delete([]byte(prefix + id)); err != nil {
				return err
			}
		}
		return nil
	})
}

// health reads an endpoint's health record, with the last success stored
// since the record was written.
func (s *Store) health(subID string) (Health, error) {
	var h Health
	err := s.db.View(func(txn *badger.Txn) error {
		var rec storedHealth
		if _, err := getJSON(txn, []byte(prefixHealth+subID), &rec); err != nil {
			return err
		}
		h, h.URL = rec.Health, rec.URL
		item, err := txn.Get([]byte(prefixSuccess + subID))
		if errors.Is(err, badger.ErrKeyNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		return item.Value(func(v []byte) error {
			if len(v) != 8 {
				return fmt.Errorf("last success of %s: a record of %d bytes", subID, len(v))
			}
			if at := time.Unix(0, int64(binary.BigEndian.Uint64(v))); at.After(h.LastSuccess) {
				h.LastSuccess = at
			}
			return nil
		})
	})
	return h, err
}

func (s *Store) saveHealth(subID string, h Health) error {
	if s.writeFault != nil {
		if err := s.writeFault("health"); err != nil {
			return err
		}
	}
	return store.Update(s.db, func(txn *badger.Txn) error {
		return setHealth(txn, subID, h)
	})
}

// storedHealth is a health record as stored: with the URL its failures
// happened at, which Health keeps out of its own JSON.
type storedHealth struct {
	Health
	URL string `json:"url,omitempty"`
}

func setHealth(txn *badger.Txn, subID string, h Health) error {
	return setJSON(txn, []byte(prefixHealth+subID), storedHealth{h, h.URL}, 0)
}

// healthRecorded returns the IDs of the subscriptions with a health record.
func (s *Store) healthRecorded() ([]string, error) {
	var ids []string
	err := s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte(prefixHealth)})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			ids = append(ids, string(it.Item().Key()[len(prefixHealth):]))
		}
		return nil
	})
	return ids, err
}

// Attempts returns the attempts of one delivery, oldest first.
func (s *Store) Attempts(did string) ([]Attempt, error) {
	_, subID, ok := strings.Cut(did, "|")
	if !ok {
		return nil, nil
	}
	all, err := s.RecentAttempts(subID, 0)
	var out []Attempt
	for i := len(all) - 1; i >= 0; i-- {
		if all[i].DeliveryID == did {
			out = append(out, all[i])
		}
	}
	return out, err
}

// RecentAttempts returns a subscription's attempts, newest first; limit 0
// means all that are retained.
func (s *Store) RecentAttempts(subID string, limit int) ([]Attempt, error) {
	var out []Attempt
	err := s.db.View(func(txn *badger.Txn) error {
		prefix := []byte(prefixAtt + subID + "\x00")
		it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix, Reverse: true, PrefetchValues: true})
		defer it.Close()
		// In reverse, seek past the last key of the prefix.
		for it.Seek(append(bytes.Clone(prefix), 0xff)); it.ValidForPrefix(prefix); it.Next() {
			var a Attempt
			if !parseAttemptKey(it.Item().Key(), &a) {
				continue
			}
			if err := it.Item().Value(func(b []byte) error { return decodeAttempt(b, &a) }); err != nil {
				return err
			}
			out = append(out, a)
			if limit > 0 && len(out) >= limit {
				break
			}
		}
		return nil
	})
	return out, err
}

// FailedDeliveries returns up to limit failed deliveries (without their
// payloads) of one subscription, or of all when subID is "".
func (s *Store) FailedDeliveries(subID string, limit int) ([]Delivery, error) {
	var out []Delivery
	err := s.db.View(func(txn *badger.Txn) error {
		prefix := []byte(prefixFailed)
		if subID != "" {
			prefix = []byte(prefixFailed + subID + "\x00")
		}
		it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix})
		defer it.Close()
		for it.Rewind(); it.Valid() && len(out) < limit; it.Next() {
			k := it.Item().Key()
			i := bytes.IndexByte(k[len(prefixFailed):], 0)
			if i < 0 {
				continue
			}
			var d Delivery
			found, err := getDelivery(txn, string(k[len(prefixFailed)+i+1:]), &d)
			if err != nil {
				return err
			}
			if found && d.State == StateFailed {
				d.Message.Data = nil
				out = append(out, d)
			}
		}
		return nil
	})
	return out, err
}

// countQueued counts every pending delivery (a key-only scan), in all
// and per subscription.
func (s *Store) countQueued(snap *badger.Txn) (total int64, bySub map[string]int, err error) {
	if s.counting != nil {
		if err := s.counting(); err != nil {
			return 0, nil, err
		}
	}
	total, bySub = tallyQueue(snap)
	return total, bySub, nil
}

// tallyQueue counts the pending deliveries in txn, in all and per
// subscription. Keys come sorted, so one subscription's entries are a run:
// its ID is taken once per run, not once per entry.
func tallyQueue(txn *badger.Txn) (total int64, bySub map[string]int) {
	it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte(prefixQ)})
	defer it.Close()
	bySub = map[string]int{}
	var run []byte // prefixQ + subscription ID + "\x00"
	inRun := 0
	endRun := func() {
		if len(run) > 0 {
			bySub[string(run[len(prefixQ):len(run)-1])] += inRun
		}
	}
	for it.Rewind(); it.Valid(); it.Next() {
		total++
		k := it.Item().Key()
		if len(run) > 0 && bytes.HasPrefix(k, run) {
			inRun++
			continue
		}
		endRun()
		run, inRun = run[:0], 1
		if i := bytes.IndexByte(k[len(prefixQ):], 0); i > 0 {
			run = append(run, k[:len(prefixQ)+i+1]...)
		}
	}
	endRun()
	return total, bySub
}

// NextDue returns when the subscription's earliest pending delivery is
// due; ok is false when none is pending.
func (s *Store) NextDue(subID string) (due time.Time, ok bool, err error) {
	err = s.db.View(func(txn *badger.Txn) error {
		prefix := queuePrefix(subID)
		it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix})
		defer it.Close()
		for it.Rewind(); it.Valid() && !ok; it.Next() {
			due, _, ok = parseQueueKey(it.Item().Key(), subID)
		}
		return nil
	})
	return due, ok, err
}

// QueueDepth counts pending deliveries of one subscription.
func (s *Store) QueueDepth(subID string) (int, error) {
	n := 0
	err := s.db.View(func(txn *badger.Txn) error {
		prefix := queuePrefix(subID)
		it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			n++
		}
		return nil
	})
	return n, err
}

// Credentials are what a tenant granted for its deliveries (Tiki's
// PUT /v1/webhooks/credentials): sent as HTTP Basic authentication.
type Credentials struct {
	ID     string `json:"id"`
	Secret string `json:"secret"`
}

// Validate reports credentials that cannot be sent as Basic
// authentication; errors never quote them.
func (c Credentials) Validate() error {
	if c.ID == "" || c.Secret == "" {
		return errors.New("id and secret are required")
	}
	a := Auth{BasicUser: c.ID, BasicPassword: c.Secret}
	return a.validate()
}

func credKey(source, tenant string) []byte { return []byte(prefixCred + source + "\x00" + tenant) }

func (s *Store) credentials(source, tenant string) (Credentials, bool, error) {
	var c Credentials
	found, err := s.viewJSON(credKey(source, tenant), &c)
	return c, found, err
}
