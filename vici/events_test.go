package vici

import (
	"context"
	"errors"
	"log/slog"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	govici "github.com/strongswan/govici/vici"
)

// fakeWithSAs answers list-sas with n IKE_SAs; the count can change.
func fakeWithSAs(t *testing.T, n *atomic.Int32) *fakeCharon {
	f := newFake(t)
	f.handle("list-sas", func(c *fakeConn, _ *govici.Message) *govici.Message {
		for i := 1; i <= int(n.Load()); i++ {
			c.stream("list-sa", listSA("gw-"+strconv.Itoa(i), sampleIKE("uniqueid", strconv.Itoa(i)), "net-4", sampleChild()))
		}
		return msg()
	})
	return f
}

// waitSubscribed waits until the stream has subscribed to every event.
func waitSubscribed(t *testing.T, f *fakeCharon) {
	t.Helper()
	for deadline := time.Now().Add(2 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		all := true
		for _, n := range eventNames {
			all = all && f.subscribers(string(n)) == 1
		}
		if all {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("stream did not subscribe")
		}
	}
}

func TestWatchEvents(t *testing.T) {
	var n atomic.Int32
	n.Store(1)
	f := fakeWithSAs(t, &n)
	checkLeaks(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s := WatchEvents(ctx, f.path, quiet())

	ev := next(t, s.C, 2*time.Second)
	if ev.Kind != EventConnected || len(ev.SAs) != 1 || ev.SAs[0].Name != "gw-1" || len(ev.SAs[0].Children) != 1 {
		t.Fatalf("first event %+v", ev)
	}
	waitSubscribed(t, f)
	for _, name := range eventNames {
		f.publish(string(name), sampleEvent(string(name), "hello"))
		ev := next(t, s.C, time.Second)
		if ev.Kind != name || ev.Time.IsZero() {
			t.Fatalf("published %s, got %+v", name, ev)
		}
		switch ev.Kind {
		case EventLog:
			if ev.Log.Message != "hello" {
				t.Errorf("log %+v", ev.Log)
			}
		case EventIKEUpDown, EventChildUpDown:
			if !ev.Up || ev.SA.LocalID != "hello" {
				t.Errorf("%s: %+v", name, ev.SA)
			}
		case EventIKERekey:
			if ev.Old.UniqueID != 3 || ev.SA.UniqueID != 7 {
				t.Errorf("ike-rekey old %d new %d", ev.Old.UniqueID, ev.SA.UniqueID)
			}
		case EventChildRekey:
			if ev.Old.Children[0].UniqueID != 4 || ev.SA.Children[0].UniqueID != 5 {
				t.Errorf("child-rekey %+v -> %+v", ev.Old.Children, ev.SA.Children)
			}
		}
	}

	// charon dies and comes back with two SAs.
	f.stop()
	ev = next(t, s.C, 2*time.Second)
	if ev.Kind != EventDisconnected || ev.Err == nil {
		t.Fatalf("after stop: %+v", ev)
	}
	t.Log(ev.Err)
	time.Sleep(700 * time.Millisecond) // let the backoff grow
	n.Store(2)
	f.start()
	back := time.Now()
	ev = next(t, s.C, 3*time.Second)
	if ev.Kind != EventConnected || len(ev.SAs) != 2 {
		t.Fatalf("after restart: %+v", ev)
	}
	if d := time.Since(back); d > 2*time.Second {
		t.Errorf("reconnected %s after charon came back, want < 2s", d)
	}
	t.Logf("reconnected %s after charon came back", time.Since(back))
	waitSubscribed(t, f)
	f.publish("log", sampleEvent("log", "again"))
	if ev := next(t, s.C, time.Second); ev.Kind != EventLog || ev.Log.Message != "again" {
		t.Fatalf("after reconnect: %+v", ev)
	}

	cancel()
	for ev := range s.C {
		t.Errorf("event after cancel: %+v", ev)
	}
}

// TestWatchEventsEarlyEvents: events of names subscribed before arrive
// ahead of each subscription's confirmation, which deadlocks a plain govici
// Subscribe. The stream must connect and deliver them.
func TestWatchEventsEarlyEvents(t *testing.T) {
	var n atomic.Int32
	f := fakeWithSAs(t, &n)
	f.eventBeforeConfirm = true
	checkLeaks(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s := WatchEvents(ctx, f.path, quiet())
	if ev := next(t, s.C, 3*time.Second); ev.Kind != EventConnected {
		t.Fatalf("first event %+v", ev)
	}
	// 4 registrations after the first, each preceded by one event per
	// name subscribed before it: 1+2+3+4.
	for i := 0; i < 10; i++ {
		ev := next(t, s.C, time.Second)
		if ev.Kind == EventLost || ev.Kind == EventDisconnected {
			t.Fatalf("event %d: %+v", i, ev)
		}
	}
	cancel()
	for range s.C {
	}
}

func TestWatchEventsSlowConsumer(t *testing.T) {
	var n atomic.Int32
	n.Store(1)
	f := fakeWithSAs(t, &n)
	checkLeaks(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s := WatchEvents(ctx, f.path, Options{Logger: slog.New(slog.DiscardHandler), EventBuffer: 2, SlowConsumer: 50 * time.Millisecond})
	if ev := next(t, s.C, 2*time.Second); ev.Kind != EventConnected {
		t.Fatalf("first event %+v", ev)
	}
	waitSubscribed(t, f)
	const total = 50
	for i := 0; i < total; i++ {
		f.publish("log", sampleEvent("log", strconv.Itoa(i)))
	}
	time.Sleep(300 * time.Millisecond) // a slow consumer

	logs, dropped, lost := 0, 0, false
	for !lost || logs+dropped < total {
		ev := next(t, s.C, 2*time.Second)
		switch ev.Kind {
		case EventLog:
			logs++
		case EventLost:
			if lost {
				t.Fatalf("second EventLost: %+v", ev)
			}
			lost, dropped = true, ev.Dropped
			if ev.Err == nil {
				t.Error("EventLost without Err")
			}
			t.Log(ev.Err)
			if ev := next(t, s.C, 2*time.Second); ev.Kind != EventConnected || len(ev.SAs) != 1 {
				t.Fatalf("after EventLost: %+v, want EventConnected", ev)
			}
		default:
			t.Fatalf("unexpected %+v", ev)
		}
	}
	if logs+dropped != total || dropped == 0 {
		t.Errorf("%d delivered + %d dropped, want %d, some dropped", logs, dropped, total)
	}
	cancel()
	for range s.C {
	}
}

func TestWatchEventsUndecodable(t *testing.T) {
	var n atomic.Int32
	f := fakeWithSAs(t, &n)
	checkLeaks(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s := WatchEvents(ctx, f.path, quiet())
	next(t, s.C, 2*time.Second)
	waitSubscribed(t, f)
	f.publish("ike-updown", msg("up", "yes", "gw", sampleIKE("local-port", "x")))
	ev := next(t, s.C, time.Second)
	if ev.Kind != EventLost || ev.Dropped != 1 || !errors.Is(ev.Err, ErrMalformed) {
		t.Fatalf("got %+v", ev)
	}
	if ev := next(t, s.C, time.Second); ev.Kind != EventConnected {
		t.Fatalf("got %+v, want EventConnected", ev)
	}
	cancel()
	for range s.C {
	}
}

func TestWatchEventsNoCharon(t *testing.T) {
	checkLeaks(t)
	path := t.TempDir() + "/none.vici"
	ctx, cancel := context.WithCancel(context.Background())
	s := WatchEvents(ctx, path, quiet())
	ev := next(t, s.C, time.Second)
	if ev.Kind != EventDisconnected || !errors.Is(ev.Err, ErrUnavailable) {
		t.Fatalf("got %+v", ev)
	}
	// Only one report per outage.
	select {
	case ev := <-s.C:
		t.Fatalf("second event %+v", ev)
	case <-time.After(300 * time.Millisecond):
	}
	cancel()
	for range s.C {
	}
}

// TestWatchEventsCancelWhileStuck: a consumer that stopped reading and a
// charon that stopped answering must not keep goroutines alive after ctx ends.
func TestWatchEventsCancelWhileStuck(t *testing.T) {
	var n atomic.Int32
	f := fakeWithSAs(t, &n)
	checkLeaks(t)
	ctx, cancel := context.WithCancel(context.Background())
	s := WatchEvents(ctx, f.path, Options{Logger: slog.New(slog.DiscardHandler), EventBuffer: 1})
	next(t, s.C, 2*time.Second)
	waitSubscribed(t, f)
	go func() {
		for i := 0; i < 5000; i++ { // far beyond every buffer: back-pressure
			f.publish("log", sampleEvent("log", "x"))
		}
	}()
	time.Sleep(200 * time.Millisecond)
	cancel()
	deadline := time.After(2 * time.Second)
	for {
		select {
		case _, ok := <-s.C:
			if !ok {
				return
			}
		case <-deadline:
			t.Fatal("stream did not close after cancel")
		}
	}
}

// TestWatchEventsBadListing: charon answers but its SAs cannot be decoded.
// The state is unknown, so the stream reports one outage, keeps retrying
// and connects once the listing decodes.
func TestWatchEventsBadListing(t *testing.T) {
	f := newFake(t)
	checkLeaks(t)
	var good atomic.Bool
	f.handle("list-sas", func(c *fakeConn, _ *govici.Message) *govici.Message {
		if good.Load() {
			c.stream("list-sa", listSA("gw", sampleIKE(), "net-4", sampleChild()))
		} else {
			c.stream("list-sa", listSA("gw", sampleIKE(), "net-4", sampleChild("bytes-in", "lots")))
		}
		return msg()
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s := WatchEvents(ctx, f.path, quiet())
	ev := next(t, s.C, time.Second)
	if ev.Kind != EventDisconnected || !errors.Is(ev.Err, ErrMalformed) {
		t.Fatalf("got %+v", ev)
	}
	t.Log(ev.Err)
	select {
	case ev := <-s.C:
		t.Fatalf("second event during the same outage: %+v", ev)
	case <-time.After(400 * time.Millisecond):
	}
	good.Store(true)
	if ev := next(t, s.C, 2*time.Second); ev.Kind != EventConnected || len(ev.SAs) != 1 {
		t.Fatalf("got %+v", ev)
	}
	cancel()
	for range s.C {
	}
}
