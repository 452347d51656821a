package vici

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
)

// VICI packet types (strongSwan's vici README, "Packet layer").
const (
	pktCmdRequest    = 0
	pktCmdResponse   = 1
	pktCmdUnknown    = 2
	pktEventRegister = 3
	pktEventUnreg    = 4
	pktEventConfirm  = 5
	pktEventUnknown  = 6
	pktEvent         = 7
)

// maxFrame bounds one VICI packet. charon's own limit is 512 KiB; anything
// far beyond that is a corrupt stream, not a message worth allocating for.
const maxFrame = 16 << 20

// queueFrames bounds the frames read from the socket but not yet taken by
// govici: beyond it frameConn stops reading, so back-pressure reaches charon.
const queueFrames = 64

// frameConn sits between govici and the unix socket. Its own goroutine reads
// whole VICI packets, which lets it repair govici v0.8.1 pitfalls (deps.md):
//
//   - Subscribe holds govici's event lock while it waits for the
//     confirmation; an event packet arriving meanwhile blocks govici's reader
//     on that lock forever (even with one name per call: events of names
//     subscribed before can arrive). Between holdEvents and releaseEvents,
//     frameConn keeps event packets back and passes only the answers, so
//     govici never dispatches an event while a subscription is pending.
//   - govici hands events to channels without blocking and drops them when
//     a channel is full. frameConn gives event packets credit: at most
//     window of them may be unacknowledged by our consumer; beyond that it
//     stops passing them (and soon stops reading the socket) instead of
//     letting govici drop. window must stay below the channel capacity.
//   - govici does not say whether a failed request reached charon; frameConn
//     counts successful writes so the Client knows whether a retry is safe.
//
// govici's read deadlines still work: they apply to the socket read in
// frameConn's goroutine, whose error ends the session as before.
type frameConn struct {
	net.Conn

	pending []byte // rest of the frame Read is handing out (govici's reader only)

	mu      sync.Mutex
	cond    sync.Cond
	in      [][]byte // frames read, not yet handed to govici
	hold    bool     // keep event frames back until releaseEvents
	held    [][]byte // event frames kept back
	window  int      // max unacknowledged event frames; 0: unlimited
	unacked int
	closed  bool
	readErr error // why the socket read loop ended

	done   chan struct{} // closed when the read loop has ended
	events atomic.Uint64 // event frames handed to govici
	writes atomic.Uint64 // successful writes (one per request packet)
}

func newFrameConn(c net.Conn, window int) *frameConn {
	f := &frameConn{Conn: c, window: window, done: make(chan struct{})}
	f.cond.L = &f.mu
	go f.readLoop()
	return f
}

// readLoop moves frames from the socket into f.in (or f.held).
func (f *frameConn) readLoop() {
	defer close(f.done)
	for {
		frame, err := readFrame(f.Conn)
		f.mu.Lock()
		if err != nil {
			if f.closed {
				err = net.ErrClosed
			}
			f.readErr = err
			f.cond.Broadcast()
			f.mu.Unlock()
			return
		}
		if f.hold && isEvent(frame) {
			f.held = append(f.held, frame)
		} else {
			for len(f.in) >= queueFrames && !f.closed {
				f.cond.Wait()
			}
			f.in = append(f.in, frame)
			f.cond.Broadcast()
		}
		f.mu.Unlock()
	}
}

func isEvent(frame []byte) bool { return len(frame) > 4 && frame[4] == pktEvent }

func (f *frameConn) Read(p []byte) (int, error) {
	if len(f.pending) == 0 {
		frame, err := f.nextFrame()
		if err != nil {
			return 0, err
		}
		f.pending = frame
	}
	n := copy(p, f.pending)
	f.pending = f.pending[n:]
	return n, nil
}

// nextFrame waits for the next frame govici may see, applying credit.
func (f *frameConn) nextFrame() ([]byte, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for {
		if f.closed {
			return nil, net.ErrClosed
		}
		if len(f.in) > 0 {
			frame := f.in[0]
			if !isEvent(frame) {
				f.in = f.in[1:]
				f.cond.Broadcast()
				return frame, nil
			}
			if f.window == 0 || f.unacked < f.window {
				f.in = f.in[1:]
				f.unacked++
				f.events.Add(1)
				f.cond.Broadcast()
				return frame, nil
			}
		} else if f.readErr != nil {
			return nil, f.readErr
		}
		f.cond.Wait()
	}
}

// readFrame reads one length-prefixed packet and returns it with its prefix.
func readFrame(r io.Reader) ([]byte, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, err
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if n > maxFrame {
		return nil, fmt.Errorf("vici: packet of %d bytes is larger than the %d allowed: the socket does not speak VICI", n, maxFrame)
	}
	frame := make([]byte, 4+int(n))
	copy(frame, hdr[:])
	if _, err := io.ReadFull(r, frame[4:]); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	return frame, nil
}

func (f *frameConn) Write(p []byte) (int, error) {
	n, err := f.Conn.Write(p)
	if err == nil {
		f.writes.Add(1)
	}
	return n, err
}

// Close closes the socket and wakes everything waiting on f.
func (f *frameConn) Close() error {
	f.mu.Lock()
	f.closed = true
	f.cond.Broadcast()
	f.mu.Unlock()
	return f.Conn.Close()
}

// holdEvents makes frameConn keep event frames back (answers still pass)
// until releaseEvents; subscribe only between the two.
func (f *frameConn) holdEvents() {
	f.mu.Lock()
	f.hold = true
	f.mu.Unlock()
}

// releaseEvents passes the held events on, in order, and ends the hold.
func (f *frameConn) releaseEvents() {
	f.mu.Lock()
	f.hold = false
	// Held events are older than anything now queued but answers, whose
	// order relative to events does not matter.
	f.in = append(f.held, f.in...)
	f.held = nil
	f.cond.Broadcast()
	f.mu.Unlock()
}

// ack returns credit for n event messages the consumer has taken.
func (f *frameConn) ack(n int) {
	f.mu.Lock()
	f.unacked = max(f.unacked-n, 0)
	f.cond.Broadcast()
	f.mu.Unlock()
}

// resetCredit forgets unacknowledged events (ones govici discarded because no
// stream wanted them cannot be acked); called before each command.
func (f *frameConn) resetCredit() {
	f.mu.Lock()
	f.unacked = 0
	f.cond.Broadcast()
	f.mu.Unlock()
}

// dead reports why the session's socket is unusable, or nil.
func (f *frameConn) dead() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return net.ErrClosed
	}
	return f.readErr
}
