package vici

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"syscall"
	"time"

	govici "github.com/strongswan/govici/vici"
)

// Credit windows (see frameConn). govici buffers responses and streamed
// events in a 128-slot channel and subscribed events in ours (eventQueue).
const (
	streamWindow = 64
	eventWindow  = 1000
	eventQueue   = 1024
)

// session is one govici session over a frameConn.
type session struct {
	gs *govici.Session
	fc *frameConn
}

// dial opens a session to the unix socket at path. govici dials with a
// background context, so the dialer closes over ours for the deadline.
func dial(ctx context.Context, path string, window int) (*session, error) {
	var fc *frameConn
	dialer := func(_ context.Context, network, addr string) (net.Conn, error) {
		c, err := dialWaiting(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		fc = newFrameConn(c, window)
		return fc, nil
	}
	gs, err := govici.NewSession(govici.WithSocketPath(path), govici.WithDialContext(dialer))
	if err != nil {
		return nil, err
	}
	return &session{gs: gs, fc: fc}, nil
}

// dialWaiting connects, waiting while the listener's backlog is full.
// charon listens on its VICI socket with a backlog of 3 and accepts from a
// job that waits for a free worker thread; Go's non-blocking connect to a
// full unix socket fails at once with EAGAIN instead of queueing. With 200
// OE setups at once (four initiates, each on its own connection, while
// charon was busy) that failed initiates as "charon is not answering".
func dialWaiting(ctx context.Context, network, addr string) (net.Conn, error) {
	pause := time.Millisecond
	for {
		c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
		if err == nil || !errors.Is(err, syscall.EAGAIN) {
			return c, err
		}
		select {
		case <-ctx.Done():
			return nil, err
		case <-time.After(pause):
		}
		pause = min(2*pause, 20*time.Millisecond)
	}
}

// close ends the session and waits for frameConn's reader (govici's own
// reader ends right after, when it reads the closed frameConn).
func (s *session) close() {
	_ = s.gs.Close()
	<-s.fc.done
}

// connError marks a failure of the connection (not of the command), after
// which the session is dropped. sent says whether the request reached the
// socket, i.e. whether charon may have acted on it.
type connError struct {
	err  error
	sent bool
}

func (e *connError) Error() string { return e.err.Error() }
func (e *connError) Unwrap() error { return e.err }

// errmsg is charon's reason in a failed answer.
func errmsg(m *govici.Message) string {
	s, _ := m.Get("errmsg").(string)
	return s
}

// classify turns a govici error without an answer into connError, except
// for "unknown command", which is charon answering.
func (s *session) classify(cmd string, err error, writes uint64) error {
	// govici's errors for these are unexported; their text is all there is.
	if msg := err.Error(); strings.Contains(msg, "unexpected response type: 2") || strings.Contains(msg, "unknown event type") {
		return fmt.Errorf("vici: %s: charon does not know this command or event (%v): is its strongSwan too old?", cmd, err)
	}
	return &connError{err: err, sent: s.fc.writes.Load() != writes}
}

// call runs one plain command.
func (s *session) call(ctx context.Context, cmd, target string, in *govici.Message) (*govici.Message, error) {
	s.fc.resetCredit()
	w := s.fc.writes.Load()
	m, err := s.gs.Call(ctx, cmd, in)
	if err != nil {
		if m != nil {
			return nil, &CommandError{Command: cmd, Target: target, Msg: errmsg(m)}
		}
		return nil, s.classify(cmd, err, w)
	}
	return m, nil
}

// stream runs a streaming command and hands each streamed event to each,
// returning credit as it goes, so govici's buffer cannot overflow. It checks
// that every event frameConn passed on arrived. On success=no it returns
// the final answer with a CommandError.
func (s *session) stream(ctx context.Context, cmd, target, event string, in *govici.Message, each func(*govici.Message)) (*govici.Message, error) {
	s.fc.resetCredit()
	w := s.fc.writes.Load()
	before := s.fc.events.Load()
	var n uint64
	for m, err := range s.gs.CallStreaming(ctx, cmd, event, in) {
		if err != nil {
			if m != nil {
				return m, &CommandError{Command: cmd, Target: target, Msg: errmsg(m)}
			}
			return nil, s.classify(cmd, err, w)
		}
		s.fc.ack(1)
		n++
		each(m)
	}
	if got := s.fc.events.Load() - before; got != n {
		return nil, &connError{err: fmt.Errorf("lost %d of %d streamed %s messages", got-n, got, event), sent: true}
	}
	return nil, nil
}

// isConnError reports whether err is a connection failure.
func isConnError(err error) bool {
	var ce *connError
	return errors.As(err, &ce)
}
