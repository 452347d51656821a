package vici

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	govici "github.com/strongswan/govici/vici"
)

// eventNames are the events an EventStream subscribes to, one per
// Subscribe call (deps.md).
var eventNames = []EventKind{EventIKEUpDown, EventChildUpDown, EventIKERekey, EventChildRekey, EventLog}

// Reconnect backoff: a restarted charon is picked up within backoffMax
// (plus a dial, five subscriptions and a list-sas: a few ms) of answering.
const (
	backoffMin = 50 * time.Millisecond
	backoffMax = time.Second
)

// EventStream delivers charon's events on one channel, reconnecting by itself.
type EventStream struct {
	// C is buffered (Options.EventBuffer) and closed once ctx has ended and
	// every goroutine of the stream has stopped.
	C <-chan Event
}

// WatchEvents starts the stream. It runs until ctx ends, redialing charon at
// path with backoff whenever it goes away, and after each (re)connect sends
// an EventConnected carrying a fresh list-sas. Each outage is reported once,
// by an EventDisconnected, however many attempts it takes.
//
// Order per connection: subscribe to all events first, then list the SAs,
// then send EventConnected, then the events (those that arrived during the
// listing included). An event after an EventConnected may therefore
// already be reflected in its SAs: apply events idempotently, keyed by
// unique ids.
//
// A slow consumer: when C is full the stream waits up to
// Options.SlowConsumer for room, holding back further events (charon
// queues them). If C is still full it drops events rather than let them
// pile up without bound, and once there is room again it sends EventLost
// (how many, and why) followed by an EventConnected with fresh SAs, so the
// consumer's state is rebuilt and never silently wrong. An event that
// cannot be decoded is handled the same way.
func WatchEvents(ctx context.Context, path string, opts Options) *EventStream {
	opts = opts.withDefaults()
	out := make(chan Event, opts.EventBuffer)
	w := &watcher{path: path, opts: opts, log: opts.Logger, out: out}
	go w.run(ctx)
	return &EventStream{C: out}
}

type watcher struct {
	path string
	opts Options
	log  *slog.Logger
	out  chan Event

	dropped int   // events lost since the last EventLost; > 0: a resync is owed
	lostErr error // why the first of them was lost
	synced  bool  // this connection has listed the SAs at least once
}

func (w *watcher) run(ctx context.Context) {
	defer close(w.out)
	backoff := backoffMin
	down := false // an EventDisconnected was the last state reported
	for {
		s, ch, err := w.connect(ctx)
		if err != nil {
			err = fmt.Errorf("vici: events: %w: is charon running, with the vici plugin listening on %s? (%w)", ErrUnavailable, w.path, err)
		} else {
			w.synced = false
			err = w.pump(ctx, s, ch)
			s.close()
			for range ch { // govici closes it when its reader has ended
			}
			switch {
			case w.synced:
				// A good connection ended: charon went away.
				down, backoff = false, backoffMin
				err = fmt.Errorf("vici: events: charon at %s went away: %w", w.path, err)
			case errors.Is(err, ErrMalformed):
				// charon answers, but its SAs cannot be decoded: the
				// state is unknown, which is an outage for the consumer.
				err = fmt.Errorf("vici: events: %w", err)
			default:
				err = fmt.Errorf("vici: events: charon at %s went away while connecting: %w", w.path, err)
			}
		}
		if ctx.Err() != nil {
			return
		}
		if !down {
			// Report each outage once, however many attempts it takes.
			down = true
			w.log.Warn("vici: events: no connection to charon; retrying", "path", w.path, "err", err)
			w.send(ctx, Event{Kind: EventDisconnected, Time: time.Now(), Err: err})
		}
		select {
		case <-time.After(backoff):
		case <-ctx.Done():
			return
		}
		backoff = min(2*backoff, backoffMax)
	}
}

// connect dials a session and subscribes to every event, holding events
// back until all subscriptions are confirmed (frameConn explains why).
func (w *watcher) connect(ctx context.Context) (*session, chan govici.Event, error) {
	ctx, cancel := context.WithTimeout(ctx, w.opts.CallTimeout)
	defer cancel()
	s, err := dial(ctx, w.path, eventWindow)
	if err != nil {
		return nil, nil, err
	}
	ch := make(chan govici.Event, eventQueue)
	// Register the channel before subscribing: events govici dispatches to
	// nobody would be lost (and never acknowledged).
	s.gs.NotifyEvents(ch)
	s.fc.holdEvents()
	// Subscribe takes no ctx: closing the session is what interrupts it.
	stop := context.AfterFunc(ctx, s.close)
	for _, name := range eventNames {
		if err = s.gs.Subscribe(string(name)); err != nil {
			err = fmt.Errorf("subscribing to %s: %w", name, err)
			break
		}
	}
	if !stop() && err == nil {
		err = ctx.Err()
	}
	if err != nil {
		s.close()
		for range ch {
		}
		return nil, nil, err
	}
	s.fc.releaseEvents()
	return s, ch, nil
}

// pump moves events from govici to the consumer until ch closes (charon
// went away: the error says why) or ctx ends. It starts with a resync.
func (w *watcher) pump(ctx context.Context, s *session, ch <-chan govici.Event) error {
	resynced := false
	for {
		if w.dropped == 0 && !resynced {
			if err := w.resync(ctx); err != nil {
				return err
			}
			resynced = true
		}
		if w.dropped > 0 {
			// Keep taking events (and losing them) until the consumer has
			// room for the marker, then resync.
			lost := Event{Kind: EventLost, Time: time.Now(), Dropped: w.dropped, Err: w.lostErr}
			select {
			case w.out <- lost:
				w.log.Warn("vici: events: events lost; resyncing", "dropped", w.dropped, "err", w.lostErr)
				w.dropped, w.lostErr = 0, nil
				resynced = false
			case _, ok := <-ch:
				if !ok {
					return s.why()
				}
				s.fc.ack(1)
				w.dropped++
			case <-ctx.Done():
				return ctx.Err()
			}
			continue
		}
		select {
		case e, ok := <-ch:
			if !ok {
				return s.why()
			}
			s.fc.ack(1)
			ev, err := decodeEvent(e.Name, e.Message, e.Timestamp)
			if err != nil {
				w.log.Error("vici: events: cannot decode an event; resyncing", "event", e.Name, "err", err)
				w.lose(err)
				continue
			}
			w.send(ctx, ev)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// why says why a session's event channel closed.
func (s *session) why() error {
	if err := s.fc.dead(); err != nil {
		return err
	}
	return fmt.Errorf("govici's reader ended")
}

func (w *watcher) lose(err error) {
	if w.dropped == 0 {
		w.lostErr = err
	}
	w.dropped++
}

// send gives ev to the consumer, waiting at most SlowConsumer for room;
// after that ev is lost (and a resync owed).
func (w *watcher) send(ctx context.Context, ev Event) {
	select {
	case w.out <- ev:
		return
	default:
	}
	t := time.NewTimer(w.opts.SlowConsumer)
	defer t.Stop()
	select {
	case w.out <- ev:
	case <-t.C:
		w.lose(fmt.Errorf("vici: events: the consumer left the channel full for %s; events were dropped", w.opts.SlowConsumer))
	case <-ctx.Done():
	}
}

// resync lists the SAs on a session of its own (the event session only
// listens) and sends EventConnected with them.
func (w *watcher) resync(ctx context.Context) error {
	lctx, cancel := context.WithTimeout(ctx, w.opts.CallTimeout)
	defer cancel()
	s, err := dial(lctx, w.path, streamWindow)
	if err != nil {
		return err
	}
	var msgs []*govici.Message
	_, err = s.stream(lctx, "list-sas", "", "list-sa", govici.NewMessage(), func(m *govici.Message) { msgs = append(msgs, m) })
	s.close()
	if err != nil {
		return fmt.Errorf("list-sas: %w", err)
	}
	sas, err := decodeSAs(msgs)
	if err != nil {
		return err
	}
	if !w.synced {
		w.log.Info("vici: events: connected to charon", "path", w.path, "sas", len(sas))
	}
	w.synced = true
	w.send(ctx, Event{Kind: EventConnected, Time: time.Now(), SAs: sas})
	return nil
}
