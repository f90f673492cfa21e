package caddywebhook

import (
	"context"
	"testing"
	"time"
)

func TestInFlightDrain(t *testing.T) {
	var f inFlight
	for range 2 {
		if !f.enter() {
			t.Fatal("enter refused before draining")
		}
	}
	f.leave()
	left := make(chan struct{})
	go func() {
		<-left
		f.leave()
	}()
	drained := make(chan int64)
	go func() { drained <- f.drain(context.Background()) }()
	// Draining has begun once enter is refused.
	for f.enter() {
		f.leave()
		time.Sleep(time.Millisecond)
	}
	select {
	case n := <-drained:
		t.Fatalf("drain returned %d with a push in flight", n)
	default:
	}
	close(left)
	if n := <-drained; n != 0 {
		t.Fatalf("drain left %d", n)
	}
	if f.enter() {
		t.Fatal("enter accepted after draining")
	}
}

func TestInFlightDrainGivesUp(t *testing.T) {
	var f inFlight
	f.enter()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	if n := f.drain(ctx); n != 1 {
		t.Fatalf("drain gave up with %d in flight, want 1", n)
	}
	f.leave() // a push settling after all must not make the count go wrong
	if f.enter() {
		t.Fatal("enter accepted after draining")
	}
}
