package delivery

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"
)

func sampleDelivery() Delivery {
	at := time.Date(2026, 11, 24, 1, 2, 3, 456789000, time.UTC)
	msg := Message{ID: "msg_1", Event: "order.status", Tenant: "seller-1", Location: "loc-9",
		Data: json.RawMessage(`{"orderId":"X","note":"ünïcode"}`), CreatedAt: at}
	return Delivery{
		ID: deliveryID(msg.ID, "static:orders"), SubscriptionID: "static:orders", Message: msg,
		State: StatePending, Attempts: 3, NextAttempt: at.Add(time.Minute), LastStatus: 503,
		LastError: "receiver answered 503", CreatedAt: at, UpdatedAt: at.Add(time.Second),
	}
}

func TestDeliveryRecordRoundTrip(t *testing.T) {
	for _, mutate := range []func(*Delivery){
		func(*Delivery) {},
		func(d *Delivery) { d.State, d.NextAttempt, d.LastError = StateDelivered, time.Time{}, "" },
		func(d *Delivery) {
			d.State, d.Message.Data, d.Message.Tenant, d.Message.Location = StateFailed, nil, "", ""
		},
		// A shared payload is stored apart: the record holds its reference.
		func(d *Delivery) { d.Message.Data, d.payloadRef = nil, "0123abcd" },
		func(d *Delivery) { d.State, d.Message.Data, d.payloadRef = StateFailed, nil, "0123abcd" },
		// A queue entry says when the delivery has no record.
		func(d *Delivery) { d.queueOnly = true },
		func(d *Delivery) { d.Message.Data, d.payloadRef, d.queueOnly = nil, "0123abcd", true },
	} {
		want := sampleDelivery()
		mutate(&want)
		var got Delivery
		if err := decodeDelivery(encodeDelivery(&want), &got); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("round trip changed the delivery:\n got %+v\nwant %+v", got, want)
		}
	}
}

// A record never says its delivery is queue-only: a delivery that has one
// keeps it, and its later queue entries must say so.
func TestRecordOfQueueOnlyDelivery(t *testing.T) {
	d := sampleDelivery()
	d.queueOnly = true
	var got Delivery
	if err := decodeDelivery(encodeRecord(&d), &got); err != nil {
		t.Fatal(err)
	}
	if got.queueOnly {
		t.Fatal("the record says the delivery has none")
	}
	if !d.queueOnly {
		t.Fatal("encodeRecord changed the delivery")
	}
	if e := pendingEntries(&got); e.recordKey == nil {
		t.Fatal("a delivery with a record is queued without it")
	}
	if e := pendingEntries(&d); e.recordKey != nil {
		t.Fatal("a queue-only delivery is queued with a record")
	}
}

func TestDeliveryRecordIsCompact(t *testing.T) {
	d := sampleDelivery()
	d.Message.Data = nil
	head, _ := json.Marshal(d)
	if bin := encodeDelivery(&d); len(bin)*3 > len(head) {
		t.Fatalf("binary record is %d bytes, JSON %d: expected at least 3x smaller", len(bin), len(head))
	}
}

// Records written as JSON by earlier versions are still read.
func TestDeliveryRecordReadsTheJSONFormat(t *testing.T) {
	want := sampleDelivery()
	data := want.Message.Data
	head := want
	head.Message.Data = nil
	b, _ := json.Marshal(head)
	b = append(append(b, 0), data...)
	var got Delivery
	if err := decodeDelivery(b, &got); err != nil {
		t.Fatal(err)
	}
	if got.ID != want.ID || got.Attempts != 3 || string(got.Message.Data) != string(data) || !got.NextAttempt.Equal(want.NextAttempt) {
		t.Fatalf("legacy record read as %+v", got)
	}
}

func TestDeliveryRecordRejectsDamage(t *testing.T) {
	d := sampleDelivery()
	d.Message.Data = nil
	b := encodeDelivery(&d)
	// Every truncation inside the fixed part is an error, never a panic.
	for n := 0; n < len(b); n++ {
		var got Delivery
		if err := decodeDelivery(b[:n], &got); err == nil {
			t.Fatalf("truncated to %d of %d bytes: no error", n, len(b))
		}
	}
	future := append([]byte{9}, b[1:]...)
	var got Delivery
	if err := decodeDelivery(future, &got); !errors.Is(err, errVersion) {
		t.Fatalf("record of format 9: %v, want errVersion", err)
	}
	badState := append([]byte{recordV1, 7}, b[2:]...)
	if err := decodeDelivery(badState, &got); !errors.Is(err, errMalformed) {
		t.Fatalf("unknown state: %v, want errMalformed", err)
	}
	d.payloadRef = "0123abcd"
	ref := encodeDelivery(&d)
	for name, bad := range map[string][]byte{
		"an empty reference":          append(ref[:len(ref)-9:len(ref)-9], 0),
		"a payload after a reference": append(ref[:len(ref):len(ref)], '{', '}'),
	} {
		if err := decodeDelivery(bad, &got); !errors.Is(err, errMalformed) {
			t.Fatalf("%s: %v, want errMalformed", name, err)
		}
	}
}

// A delivery sharing its payload is stored without it: the queue entry
// and the record are as small as a delivery with no payload at all.
func TestSharedPayloadIsNotInTheEntries(t *testing.T) {
	d := sampleDelivery()
	d.Message.Data = json.RawMessage(`{"blob":"` + strings.Repeat("x", 64<<10) + `"}`)
	d.payloadRef = payloadRefFor(&d.Message)
	e := pendingEntries(&d)
	// Nor allocated for it: a fan-out to 10,000 would allocate 10,000 times.
	if cap(e.queueValue) > 200 || !reflect.DeepEqual(e.queueValue, e.recordValue) {
		t.Fatalf("queue entry of %d bytes (capacity %d), record of %d", len(e.queueValue), cap(e.queueValue), len(e.recordValue))
	}
	if string(e.refKey) != prefixPayRef+d.payloadRef+"\x00"+d.ID {
		t.Fatalf("reference key %q", e.refKey)
	}
	var got Delivery
	if err := decodeDelivery(e.queueValue, &got); err != nil || got.payloadRef != d.payloadRef || got.Message.Data != nil {
		t.Fatalf("decoded %+v, %v", got, err)
	}
}

func TestAttemptRecordRoundTrip(t *testing.T) {
	want := Attempt{
		DeliveryID: deliveryID("msg_1", "sub_9"), SubscriptionID: "sub_9", MessageID: "msg_1", Event: "order.status",
		N: 2, At: time.Date(2026, 11, 24, 1, 2, 3, 4, time.UTC), Status: 500, Error: "receiver answered 500",
		Duration: 1500 * time.Microsecond,
	}
	var got Attempt
	if !parseAttemptKey(attemptKey(&want), &got) {
		t.Fatal("attempt key not parsed")
	}
	if err := decodeAttempt(encodeAttempt(&want), &got); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("round trip changed the attempt:\n got %+v\nwant %+v", got, want)
	}
	b := encodeAttempt(&want)
	for n := 0; n < len(b); n++ {
		if err := decodeAttempt(b[:n], &got); err == nil {
			t.Fatalf("attempt truncated to %d of %d bytes: no error", n, len(b))
		}
	}
}

func FuzzDecodeDelivery(f *testing.F) {
	d := sampleDelivery()
	f.Add(encodeDelivery(&d))
	f.Add([]byte(`{"id":"a"}` + "\x00{}"))
	f.Add([]byte{recordV1})
	d.Message.Data, d.payloadRef = nil, "0123abcd"
	f.Add(encodeDelivery(&d))
	d.queueOnly = true
	f.Add(encodeDelivery(&d))
	f.Fuzz(func(t *testing.T, b []byte) {
		var got Delivery
		if decodeDelivery(b, &got) != nil {
			return
		}
		if b[0] == '{' {
			return
		}
		// What decodes must encode back to the same bytes.
		var again Delivery
		if err := decodeDelivery(encodeDelivery(&got), &again); err != nil || !reflect.DeepEqual(got, again) {
			t.Fatalf("re-encoding %+v: %v, %+v", got, err, again)
		}
	})
}
