package tokenapi

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"time"

	"golang.org/x/sys/unix"

	"github.com/obol-ipsec/obol/plugins"
	"github.com/obol-ipsec/obol/tokenapi/wire"
)

// Change is one change of the host's SAs (plugins.TokenChange).
type Change = plugins.TokenChange

// ChangeFeed is implemented by Facts that can tell when SAs change; the
// server then accepts SUBSCRIBE. Changes returns nil when there is no feed.
type ChangeFeed interface {
	Changes(ctx context.Context) <-chan Change
}

// Event timing: changes come in bursts (a rekey is up, rekey and down
// events within milliseconds), so subscriptions are re-examined once the
// burst settles, and once more a little later because charon may still
// list a CHILD_SA for a moment after reporting it down.
const (
	settleDelay  = 50 * time.Millisecond
	recheckDelay = time.Second
)

// subscription is one subscribed flow: only the flow is kept, never the
// socket.
type subscription struct {
	id   uint64
	flow Flow
	last flowState
}

func (s *Server) subscribe(ctx context.Context, cl *clientConn, id uint32, fd int) []byte {
	flow, err := InspectFD(fd)
	unix.Close(fd) // the subscription keeps the flow, not the socket
	if err != nil {
		return s.refusal(id, err)
	}
	if !s.eventsOn.Load() {
		return s.errorReply(id, wire.ErrCodeNoEvents, "this obold has no source of SA changes, so it cannot send events; use PTOKEN_QUERY")
	}
	s.mu.Lock()
	full := len(cl.subs) >= s.cfg.MaxSubscriptions
	s.mu.Unlock()
	if full {
		return s.errorReply(id, wire.ErrCodeLimit, fmt.Sprintf("this connection has %d subscriptions; UNSUBSCRIBE some or raise tokenapi.max_subscriptions_per_client", s.cfg.MaxSubscriptions))
	}
	a, rerr := s.assess(ctx, flow)
	if rerr != nil {
		return s.errorReply(id, rerr.code, rerr.text)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(cl.subs) >= s.cfg.MaxSubscriptions {
		return s.errorReply(id, wire.ErrCodeLimit, fmt.Sprintf("this connection has %d subscriptions; UNSUBSCRIBE some or raise tokenapi.max_subscriptions_per_client", s.cfg.MaxSubscriptions))
	}
	cl.nextSub++
	sub := &subscription{id: cl.nextSub, flow: flow, last: a.state}
	msg, err := a.state.attrs(wire.NewBuilder(wire.TypeSubscribed, id).U64(wire.AttrSubscription, sub.id)).Bytes()
	if err != nil {
		return s.errorReply(id, wire.ErrCodeInternal, err.Error())
	}
	cl.subs[sub.id] = sub
	s.holdPeerLocked(cl, a.state.itoken, a.peer)
	return msg
}

func (s *Server) unsubscribe(cl *clientConn, id uint32, m wire.Message) []byte {
	sid, ok := m.U64(wire.AttrSubscription)
	if !ok {
		return s.errorReply(id, wire.ErrCodeBadMessage, "UNSUBSCRIBE needs a SUBSCRIPTION attribute")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	sub, ok := cl.subs[sid]
	if !ok {
		return s.errorReply(id, wire.ErrCodeUnknownHandle, "no such subscription on this connection")
	}
	delete(cl.subs, sid)
	s.dropPeerLocked(cl, sub.last.itoken)
	b, _ := wire.NewBuilder(wire.TypeOK, id).Bytes()
	return b
}

func (s *Server) queryFrom(ctx context.Context, cl *clientConn, id uint32, m wire.Message, fd int) []byte {
	addr, _ := m.Addr(wire.AttrPeerAddr)
	port, _ := m.U16(wire.AttrPeerPort)
	local, _ := m.Addr(wire.AttrLocalAddr)
	isLocal := s.isLocal
	if isLocal == nil {
		isLocal = hostAddress
	}
	flow, err := InspectDatagramFD(fd, netip.AddrPortFrom(addr, port), local, isLocal)
	unix.Close(fd)
	if err != nil {
		return s.refusal(id, err)
	}
	return s.queryFlow(ctx, cl, id, flow)
}

// write sends one message to the client within writeTimeout.
func (cl *clientConn) write(msg []byte) error {
	cl.wmu.Lock()
	defer cl.wmu.Unlock()
	cl.conn.SetWriteDeadline(time.Now().Add(writeTimeout))
	_, err := cl.conn.Write(msg)
	return err
}

// writeEvents sends queued events until the client is gone. A write that
// does not finish within writeTimeout drops the client.
func (s *Server) writeEvents(cl *clientConn, log *slog.Logger) {
	for {
		select {
		case <-cl.gone:
			return
		case msg := <-cl.out:
			if err := cl.write(msg); err != nil {
				log.Info("tokenapi: event not delivered, dropping client", "err", err)
				cl.conn.Close()
				return
			}
		}
	}
}

// pushLocked queues an event for cl; a client whose queue is full reads
// too slowly and is disconnected rather than buffered for without bound.
func (s *Server) pushLocked(cl *clientConn, msg []byte) {
	select {
	case cl.out <- msg:
	default:
		s.log.Warn("tokenapi: client does not read its events, dropping it", "pid", cl.cred.Pid, "queued", cap(cl.out))
		cl.conn.Close()
	}
}

// dispatch turns the host's changes into events until ctx ends.
func (s *Server) dispatch(ctx context.Context, changes <-chan Change) {
	var pending []Change
	var settle, recheck <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case c, ok := <-changes:
			if !ok {
				return
			}
			pending = append(pending, c)
			if settle == nil {
				settle = time.After(settleDelay)
			}
		case <-settle:
			s.reassess(ctx, pending)
			pending, settle = nil, nil
			recheck = time.After(recheckDelay)
		case <-recheck:
			recheck = nil
			s.reassess(ctx, nil)
		}
	}
}

type subRef struct {
	cl   *clientConn
	id   uint64
	flow Flow
}

// reassess looks every subscribed flow up again and sends an event for each
// that changed, or that a rekey (failed or not) in changes concerns.
func (s *Server) reassess(ctx context.Context, changes []Change) {
	s.mu.Lock()
	var refs []subRef
	for cl := range s.clients {
		for id, sub := range cl.subs {
			refs = append(refs, subRef{cl: cl, id: id, flow: sub.flow})
		}
	}
	s.mu.Unlock()
	// One lookup per distinct flow: many subscriptions often share one.
	found := map[Flow]assessment{}
	for _, r := range refs {
		if _, ok := found[r.flow]; ok {
			continue
		}
		a, rerr := s.assess(ctx, r.flow)
		if rerr != nil {
			continue // charon away: the next change (reset) tries again
		}
		found[r.flow] = a
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, r := range refs {
		a, ok := found[r.flow]
		if !ok {
			continue
		}
		sub := r.cl.subs[r.id]
		if sub == nil {
			continue // unsubscribed meanwhile
		}
		for _, ev := range eventsFor(sub.last, a.state, changes) {
			msg, err := a.state.attrs(wire.NewBuilder(wire.TypeEvent, 0).
				U64(wire.AttrSubscription, sub.id).U8(wire.AttrEventKind, uint8(ev.kind))).Bytes()
			if ev.text != "" {
				// A failed rekey leaves the flow protected: the WHY says
				// what charon reported.
				msg, err = a.state.attrs(wire.NewBuilder(wire.TypeEvent, 0).
					U64(wire.AttrSubscription, sub.id).U8(wire.AttrEventKind, uint8(ev.kind)).
					U16(wire.AttrWhyCode, uint16(wire.ReasonNegotiationFailed)).String(wire.AttrWhyText, ev.text)).Bytes()
			}
			if err != nil {
				s.log.Warn("tokenapi: event too large", "err", err)
				continue
			}
			s.pushLocked(r.cl, msg)
		}
		if sub.last.itoken != a.state.itoken {
			s.holdPeerLocked(r.cl, a.state.itoken, a.peer)
			s.dropPeerLocked(r.cl, sub.last.itoken)
		} else if a.peer != nil {
			if e := s.peers[a.state.itoken]; e != nil {
				e.facts = a.peer
			}
		}
		sub.last = a.state
	}
}

type flowEvent struct {
	kind wire.EventKind
	text string // REKEY_FAILED: charon's line
}

// eventsFor compares a flow's last and current state, given the changes
// since: what a subscriber is told, in order.
func eventsFor(last, now flowState, changes []Change) []flowEvent {
	var out []flowEvent
	switch {
	case !last.protected && now.protected:
		out = append(out, flowEvent{kind: wire.EventUp})
	case last.protected && !now.protected:
		out = append(out, flowEvent{kind: wire.EventDown})
	case now.protected:
		if last.itoken != now.itoken {
			out = append(out, flowEvent{kind: wire.EventIdentityChanged})
		} else if last.privacy != now.privacy || last.integrity != now.integrity ||
			last.compression != now.compression || last.label != now.label || last.why != now.why {
			out = append(out, flowEvent{kind: wire.EventProtectionChanged})
		}
	}
	if !last.protected || !now.protected {
		return out
	}
	rekeyed, failed := false, ""
	for _, c := range changes {
		if c.IKEName != last.ike && c.IKEName != now.ike {
			continue
		}
		switch c.Kind {
		case plugins.TokenChangeRekeyed:
			// A CHILD_SA rekey names its child; an IKE_SA rekey leaves
			// the CHILD_SAs alone and is not the flow's news.
			if c.Child != "" && (c.Child == last.child || c.Child == now.child) {
				rekeyed = true
			}
		case plugins.TokenChangeRekeyFailed:
			failed = c.Text
		}
	}
	if rekeyed {
		out = append(out, flowEvent{kind: wire.EventRekeyed})
	}
	if failed != "" {
		out = append(out, flowEvent{kind: wire.EventRekeyFailed, text: failed})
	}
	return out
}
