package client

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/obol-ipsec/obol/tokenapi/wire"
)

// SubscriptionID names a subscription on one Events connection.
type SubscriptionID uint64

// Event is a change of a subscribed flow. State is the flow's pToken as
// of the event (Handle is 0: an event makes no pToken).
type Event struct {
	Subscription SubscriptionID
	Kind         wire.EventKind
	State        PToken
}

// Events is a connection to obold that carries subscriptions: obold pushes
// events on it, so it is kept apart from the request/reply Client. Read
// events from C until it is closed (by Close, or when obold drops the
// connection, e.g. because events were not read: see Err).
type Events struct {
	conn *net.UnixConn
	c    chan Event

	mu      sync.Mutex // one request at a time
	nextID  uint32
	replies chan wire.Message

	errMu   sync.Mutex
	err     error
	done    chan struct{}
	closing chan struct{} // Close was called: the reader stops even if C is not read
}

// eventBuffer is how many events the client holds for a slow reader of C;
// beyond it, obold's own queue fills and obold drops the connection.
const eventBuffer = 256

// DialEvents opens an events connection to the token API socket at path.
func DialEvents(ctx context.Context, path string) (*Events, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unixpacket", path)
	if err != nil {
		return nil, fmt.Errorf("token API: connect to %s: %w (is obold running with [tokenapi] enabled?)", path, err)
	}
	e := &Events{conn: c.(*net.UnixConn), c: make(chan Event, eventBuffer), replies: make(chan wire.Message, 1),
		done: make(chan struct{}), closing: make(chan struct{})}
	go e.read()
	return e, nil
}

// C delivers the events of all subscriptions, in order. Read it
// concurrently with requests on this connection: while C is full (256
// events), replies wait behind the undelivered event too.
func (e *Events) C() <-chan Event { return e.c }

// Err is why the connection ended (nil while it is open, or after Close).
func (e *Events) Err() error {
	e.errMu.Lock()
	defer e.errMu.Unlock()
	return e.err
}

// Close ends the connection and every subscription on it.
func (e *Events) Close() error {
	select {
	case <-e.closing:
	default:
		close(e.closing)
	}
	err := e.conn.Close()
	<-e.done
	return err
}

func (e *Events) read() {
	defer close(e.done)
	defer close(e.c)
	defer close(e.replies)
	buf := make([]byte, wire.MaxMessage+1)
	for {
		n, err := e.conn.Read(buf)
		if err == nil && n == 0 {
			err = errors.New("obold closed the connection")
		}
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				e.errMu.Lock()
				e.err = fmt.Errorf("token API events: %w", err)
				e.errMu.Unlock()
			}
			return
		}
		m, err := wire.Decode(slices.Clone(buf[:n])) // the event outlives buf
		if err != nil {
			e.errMu.Lock()
			e.err = fmt.Errorf("token API events: bad message from obold: %w", err)
			e.errMu.Unlock()
			e.conn.Close()
			return
		}
		if m.Type == wire.TypeEvent && m.ID == 0 {
			sid, _ := m.U64(wire.AttrSubscription)
			kind, _ := m.U8(wire.AttrEventKind)
			select {
			case e.c <- Event{Subscription: SubscriptionID(sid), Kind: wire.EventKind(kind), State: ptokenFields(m)}:
			case <-e.closing:
				return
			}
			continue
		}
		select {
		case e.replies <- m:
		default: // a reply nobody waits for any more (its request was abandoned)
		}
	}
}

// Subscribe asks for events about the flow of s, a connected socket the
// caller holds (passed with SCM_RIGHTS and closed by obold at once: the
// subscription keeps only the flow). It returns the subscription and the
// flow's pToken now.
func (e *Events) Subscribe(ctx context.Context, s syscall.Conn) (SubscriptionID, PToken, error) {
	rc, err := s.SyscallConn()
	if err != nil {
		return 0, PToken{}, fmt.Errorf("token API: cannot get the socket's descriptor: %w", err)
	}
	var m wire.Message
	var rerr error
	if err := rc.Control(func(fd uintptr) {
		m, rerr = e.roundTrip(ctx, wire.TypeSubscribe, nil, []int{int(fd)})
	}); err != nil {
		return 0, PToken{}, fmt.Errorf("token API: cannot use the socket's descriptor: %w", err)
	}
	if rerr != nil {
		return 0, PToken{}, rerr
	}
	if m.Type != wire.TypeSubscribed {
		return 0, PToken{}, fmt.Errorf("token API: got %s, want SUBSCRIBED", m.Type)
	}
	sid, _ := m.U64(wire.AttrSubscription)
	return SubscriptionID(sid), ptokenFields(m), nil
}

// Unsubscribe ends one subscription.
func (e *Events) Unsubscribe(ctx context.Context, id SubscriptionID) error {
	_, err := e.roundTrip(ctx, wire.TypeUnsubscribe, func(b *wire.Builder) { b.U64(wire.AttrSubscription, uint64(id)) }, nil)
	return err
}

// IToken returns the peer behind an iToken one of this connection's
// subscriptions currently carries.
func (e *Events) IToken(ctx context.Context, h ITokenHandle) (IToken, error) {
	m, err := e.roundTrip(ctx, wire.TypeITokenGet, func(b *wire.Builder) { b.U64(wire.AttrIToken, uint64(h)) }, nil)
	if err != nil {
		return IToken{}, err
	}
	return decodeIToken(m)
}

func (e *Events) roundTrip(ctx context.Context, t wire.Type, attrs func(*wire.Builder), fds []int) (wire.Message, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	select {
	case <-e.replies: // a late reply to an abandoned request
	default:
	}
	e.nextID++
	id := e.nextID
	b := wire.NewBuilder(t, id)
	if attrs != nil {
		attrs(b)
	}
	req, err := b.Bytes()
	if err != nil {
		return wire.Message{}, err
	}
	var oob []byte
	if len(fds) > 0 {
		oob = syscall.UnixRights(fds...)
	}
	e.conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if _, _, err := e.conn.WriteMsgUnix(req, oob, nil); err != nil {
		return wire.Message{}, fmt.Errorf("token API: send %s: %w", t, err)
	}
	for {
		select {
		case <-ctx.Done():
			return wire.Message{}, fmt.Errorf("token API: waiting for the reply to %s: %w", t, ctx.Err())
		case m, ok := <-e.replies:
			if !ok {
				if err := e.Err(); err != nil {
					return wire.Message{}, err
				}
				return wire.Message{}, errors.New("token API: the events connection is closed")
			}
			if m.ID != id && m.ID != 0 {
				continue
			}
			if m.Type == wire.TypeError {
				code, _ := m.U16(wire.AttrErrorCode)
				return m, &Error{Code: wire.ErrorCode(code), Text: m.String(wire.AttrErrorText)}
			}
			return m, nil
		}
	}
}
