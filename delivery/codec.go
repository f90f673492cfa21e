package delivery

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"time"
)

// Deliveries and attempts are stored in a compact binary form: every one
// of them goes through badger's compactions several times, so each byte
// saved is saved again at every level, and decoding them is on the path of
// every attempt. A record starts with its format version; records written
// as JSON by earlier versions start with '{' and are still read. Version 2
// is a delivery whose payload is stored apart (payloadRef): the reference
// follows the message's creation time, in place of the payload.
const (
	recordV1 = 1
	recordV2 = 2
	// queueOnlyFlag, set in the version byte of a queue entry, marks a
	// delivery that has no record (Delivery.queueOnly).
	queueOnlyFlag = 0x80
)

var (
	errMalformed = errors.New("malformed delivery record")
	errVersion   = errors.New("delivery record of an unknown format version (written by a newer version of the plugin?)")
)

var stateCodes = map[State]byte{StatePending: 0, StateDelivered: 1, StateFailed: 2}
var codeStates = [...]State{StatePending, StateDelivered, StateFailed}

// encodeDelivery lays a delivery out as: version, state, attempts, last
// status, next attempt, created, updated, last error, subscription ID, the
// message's ID, event, tenant, location and creation time, then the
// payload as is (the rest of the record), or in version 2 the payload's
// reference. The delivery's own ID is not stored: it is derived from the
// message and subscription IDs.
func encodeDelivery(d *Delivery) []byte {
	m := &d.Message
	n := 48 + len(d.LastError) + len(d.SubscriptionID) + len(m.ID) + len(m.Event) + len(m.Tenant) + len(m.Location) + len(d.payloadRef) + storedPayload(d)
	b := make([]byte, 0, n)
	version := byte(recordV1)
	if d.payloadRef != "" {
		version = recordV2
	}
	if d.queueOnly {
		version |= queueOnlyFlag
	}
	b = append(b, version, stateCodes[d.State])
	b = binary.AppendUvarint(b, uint64(d.Attempts))
	b = binary.AppendUvarint(b, uint64(d.LastStatus))
	b = appendTime(b, d.NextAttempt)
	b = appendTime(b, d.CreatedAt)
	b = appendTime(b, d.UpdatedAt)
	for _, s := range []string{d.LastError, d.SubscriptionID, m.ID, m.Event, m.Tenant, m.Location} {
		b = appendString(b, s)
	}
	b = appendTime(b, m.CreatedAt)
	if d.payloadRef != "" {
		return appendString(b, d.payloadRef)
	}
	return append(b, m.Data...)
}

// encodeRecord encodes d for its record, which a queue-only delivery
// does not have until it fails.
func encodeRecord(d *Delivery) []byte {
	r := *d
	r.queueOnly = false
	return encodeDelivery(&r)
}

// storedPayload is how many bytes at the end of d's encoding are its
// payload.
func storedPayload(d *Delivery) int {
	if d.payloadRef != "" {
		return 0
	}
	return len(d.Message.Data)
}

// decodeDelivery fills d from a stored record; the payload is copied, as
// badger's buffer is only valid inside its transaction.
func decodeDelivery(b []byte, d *Delivery) error {
	if len(b) > 0 && b[0] == '{' {
		return decodeDeliveryJSON(b, d)
	}
	r := reader{b: b}
	version := r.byte()
	d.queueOnly = version&queueOnlyFlag != 0
	version &^= queueOnlyFlag
	if version != recordV1 && version != recordV2 {
		if r.err != nil {
			return r.err
		}
		return errVersion
	}
	state := r.byte()
	if int(state) >= len(codeStates) {
		return errMalformed
	}
	d.State = codeStates[state]
	d.Attempts = int(r.uvarint())
	d.LastStatus = int(r.uvarint())
	d.NextAttempt, d.CreatedAt, d.UpdatedAt = r.time(), r.time(), r.time()
	m := &d.Message
	d.LastError, d.SubscriptionID = r.string(), r.string()
	m.ID, m.Event, m.Tenant, m.Location = r.string(), r.string(), r.string(), r.string()
	m.CreatedAt = r.time()
	d.payloadRef = ""
	if version == recordV2 {
		if d.payloadRef = r.string(); r.err == nil && (d.payloadRef == "" || len(r.b) > 0) {
			r.fail()
		}
	}
	if r.err != nil {
		return r.err
	}
	m.Data = nil
	if len(r.b) > 0 {
		m.Data = bytes.Clone(r.b)
	}
	d.ID = deliveryID(m.ID, d.SubscriptionID)
	return nil
}

// decodeDeliveryJSON reads the earlier format: the JSON of the delivery
// without its payload, a NUL byte, the payload.
func decodeDeliveryJSON(b []byte, d *Delivery) error {
	i := bytes.IndexByte(b, 0)
	if i < 0 {
		return errMalformed
	}
	d.payloadRef, d.queueOnly = "", false // never written as JSON
	if err := json.Unmarshal(b[:i], d); err != nil {
		return err
	}
	d.Message.Data = bytes.Clone(b[i+1:])
	return nil
}

// An attempt's key holds its subscription, time, delivery and number; the
// value holds the rest: version, success, status, duration, error, event.
func encodeAttempt(a *Attempt) []byte {
	b := make([]byte, 0, 24+len(a.Error)+len(a.Event))
	success := byte(0)
	if a.Success {
		success = 1
	}
	b = append(b, recordV1, success)
	b = binary.AppendUvarint(b, uint64(a.Status))
	b = binary.AppendVarint(b, int64(a.Duration))
	b = appendString(b, a.Error)
	return appendString(b, a.Event)
}

// decodeAttempt fills the fields of a that its value holds; the caller
// takes the others from the key.
func decodeAttempt(b []byte, a *Attempt) error {
	if len(b) > 0 && b[0] == '{' {
		return json.Unmarshal(b, a)
	}
	r := reader{b: b}
	if v := r.byte(); v != recordV1 {
		if r.err != nil {
			return r.err
		}
		return errVersion
	}
	a.Success = r.byte() == 1
	a.Status = int(r.uvarint())
	a.Duration = time.Duration(r.varint())
	a.Error, a.Event = r.string(), r.string()
	return r.err
}

// Times are stored as Unix nanoseconds, zero for the zero time (whose
// UnixNano is out of range).
func appendTime(b []byte, t time.Time) []byte {
	if t.IsZero() {
		return binary.AppendVarint(b, 0)
	}
	return binary.AppendVarint(b, t.UnixNano())
}

func appendString(b []byte, s string) []byte {
	return append(binary.AppendUvarint(b, uint64(len(s))), s...)
}

// reader decodes a record front to back; the first error sticks and every
// later read returns a zero value.
type reader struct {
	b   []byte
	err error
}

func (r *reader) fail() { r.err, r.b = errMalformed, nil }

func (r *reader) byte() byte {
	if len(r.b) == 0 {
		r.fail()
		return 0
	}
	c := r.b[0]
	r.b = r.b[1:]
	return c
}

func (r *reader) uvarint() uint64 {
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.fail()
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *reader) varint() int64 {
	v, n := binary.Varint(r.b)
	if n <= 0 {
		r.fail()
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *reader) time() time.Time {
	n := r.varint()
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n).UTC()
}

func (r *reader) string() string {
	n := r.uvarint()
	if n > uint64(len(r.b)) {
		r.fail()
		return ""
	}
	s := string(r.b[:n])
	r.b = r.b[n:]
	return s
}
