package tokenapi

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"github.com/obol-ipsec/obol/internal/peercred"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/user"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/obol-ipsec/obol/tokenapi/wire"
)

// maxFDs is how many descriptors one recvmsg accepts before the request is
// refused; only one is allowed, the rest is room to see and close extras.
const maxFDs = 8

const writeTimeout = 5 * time.Second

// Server answers token queries. Create it with NewServer; it holds no
// global state, so several may run (tests do).
type Server struct {
	cfg   Config
	facts Facts
	log   *slog.Logger
	// secret keys the iToken handle space: handles are stable while the
	// server lives and cannot be guessed or compared across restarts.
	secret [32]byte

	eventsOn atomic.Bool // Serve found a change feed: SUBSCRIBE works
	// isLocal says whether an address is the host's (PTOKEN_QUERY_FROM on
	// a wildcard socket); nil means the interfaces of obold's namespace.
	isLocal func(netip.Addr) bool
	// protector is the host's side of PROTECT; nil: PROTECT is unknown.
	protector Protector
	lowerGIDs []uint32 // tokenapi.lower_groups, resolved

	mu      sync.Mutex
	peers   map[uint64]*peerEntry // live iTokens, by handle
	clients map[*clientConn]struct{}

	// memo keeps what was derived from each SA the facts named by
	// Protection.Memo, so repeated queries redo none of it (see saFactsOf).
	memoMu sync.Mutex
	memo   map[uint64]*saFacts
}

// maxMemo bounds the memo: past it, it starts again empty (entries of old
// snapshots are never asked for again, so nothing better is lost).
const maxMemo = 1 << 14

// peerFacts is what an iToken says of its peer. Shared between queries and
// never modified: a newer answer replaces the pointer.
type peerFacts struct {
	peer  Peer
	auth  AuthFacts
	audit string
}

type peerEntry struct {
	refs  int // live pTokens referring to it, over all clients
	facts *peerFacts
}

// saFacts is what the server derives from one CHILD_SA and its peer: all
// of a pToken but the flow.
type saFacts struct {
	how    HowFacts
	itoken uint64
	peer   *peerFacts
	audit  string // the pToken audit after "FLOW: "
}

type pToken struct {
	reply  []byte // the PTOKEN_REPLY body attributes, pre-encoded
	itoken uint64
}

type clientConn struct {
	conn    *net.UnixConn
	cred    *unix.Ucred
	next    uint64
	ptokens map[uint64]*pToken
	itokens map[uint64]int // iTokens this client learned, with pToken counts

	subs    map[uint64]*subscription
	nextSub uint64
	// wmu orders writes: replies from the request loop, events from the
	// writer; out is the bounded event queue (a full queue drops the client).
	wmu  sync.Mutex
	out  chan []byte
	gone chan struct{}
}

// NewServer checks cfg and returns a server asking facts.
func NewServer(cfg Config, facts Facts, log *slog.Logger) (*Server, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if facts == nil {
		return nil, errors.New("tokenapi: NewServer needs a Facts implementation")
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{cfg: cfg, facts: facts, log: log, peers: map[uint64]*peerEntry{}, clients: map[*clientConn]struct{}{},
		memo: map[uint64]*saFacts{}}
	for _, g := range cfg.LowerGroups {
		gid, err := lookupGID(g)
		if err != nil {
			return nil, fmt.Errorf("tokenapi.lower_groups: group %q: %w; create it or remove it from the list", g, err)
		}
		s.lowerGIDs = append(s.lowerGIDs, uint32(gid))
	}
	if _, err := rand.Read(s.secret[:]); err != nil {
		return nil, fmt.Errorf("tokenapi: no randomness for the iToken handle space: %w", err)
	}
	return s, nil
}

// SetProtector lets the server answer PROTECT requests through p. Call it
// before Serve.
func (s *Server) SetProtector(p Protector) { s.protector = p }

// Listen creates the server's socket at cfg.Socket with cfg.Mode and
// cfg.Group, replacing a stale socket file nobody listens on.
func (s *Server) Listen() (*net.UnixListener, error) {
	path := s.cfg.Socket
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("tokenapi: %s exists and is not a socket; remove it or set tokenapi.socket elsewhere", path)
		}
		if c, err := net.Dial("unixpacket", path); err == nil {
			c.Close()
			return nil, fmt.Errorf("tokenapi: another server already listens on %s; stop it or set tokenapi.socket elsewhere", path)
		}
		os.Remove(path)
	}
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		return nil, fmt.Errorf("tokenapi: listen on %s: %w (does its directory exist?)", path, err)
	}
	if err := os.Chmod(path, os.FileMode(s.cfg.Mode)); err != nil {
		ln.Close()
		return nil, fmt.Errorf("tokenapi: chmod %s: %w", path, err)
	}
	if s.cfg.Group != "" {
		gid, err := lookupGID(s.cfg.Group)
		if err == nil {
			err = os.Chown(path, -1, gid)
		}
		if err != nil {
			ln.Close()
			return nil, fmt.Errorf("tokenapi: group %q for %s: %w; set tokenapi.group to an existing group", s.cfg.Group, path, err)
		}
	}
	return ln, nil
}

func lookupGID(g string) (int, error) {
	if n, err := strconv.Atoi(g); err == nil {
		return n, nil
	}
	gr, err := user.LookupGroup(g)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(gr.Gid)
}

// Serve accepts clients on ln until ctx ends, then closes ln and every
// client connection (freeing their pTokens) and returns nil.
func (s *Server) Serve(ctx context.Context, ln *net.UnixListener) error {
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	if feed, ok := s.facts.(ChangeFeed); ok {
		if ch := feed.Changes(ctx); ch != nil {
			s.eventsOn.Store(true)
			go s.dispatch(ctx, ch)
		}
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	sem := make(chan struct{}, s.cfg.MaxClients)
	for {
		c, err := ln.AcceptUnix()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, net.ErrClosed) {
				return fmt.Errorf("tokenapi: listener closed: %w", err)
			}
			s.log.Warn("tokenapi: accept failed", "err", err)
			select {
			case <-time.After(50 * time.Millisecond):
			case <-ctx.Done():
				return nil
			}
			continue
		}
		select {
		case sem <- struct{}{}:
		default:
			s.log.Warn("tokenapi: too many clients, refusing one", "max_clients", s.cfg.MaxClients)
			s.sendError(c, 0, wire.ErrCodeLimit, "too many clients; close idle token API connections or raise tokenapi.max_clients")
			c.Close()
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			s.serveClient(ctx, c)
		}()
	}
}

func (s *Server) admitted(cred *unix.Ucred) bool {
	if len(s.cfg.AllowUIDs) == 0 && len(s.cfg.AllowGIDs) == 0 {
		return true
	}
	return cred.Uid == 0 || slices.Contains(s.cfg.AllowUIDs, cred.Uid) ||
		slices.ContainsFunc(s.cfg.AllowGIDs, func(g uint32) bool { return peercred.InGroup(cred, g) })
}

func (s *Server) serveClient(ctx context.Context, c *net.UnixConn) {
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	defer c.Close()
	cred, err := peercred.Of(c)
	if err != nil {
		s.log.Warn("tokenapi: SO_PEERCRED failed, dropping client", "err", err)
		return
	}
	log := s.log.With("pid", cred.Pid, "uid", cred.Uid)
	if !s.admitted(cred) {
		log.Info("tokenapi: client refused by allow_uids/allow_gids")
		// Answer its first request, so the client reads why instead of
		// finding the connection closed.
		var id uint32
		buf := make([]byte, wire.HeaderLen)
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		oob := make([]byte, 64)
		if n, oobn, _, _, err := c.ReadMsgUnix(buf, oob); err == nil {
			closeRights(oob[:oobn]) // a refused client's socket is not ours to keep
			if h, _, err := wire.DecodeHeader(buf[:n]); err == nil {
				id = h.ID
			}
		}
		s.sendError(c, id, wire.ErrCodeDenied, "this user may not use the token API; ask the administrator to list it in tokenapi.allow_uids or allow_gids")
		return
	}
	cl := &clientConn{conn: c, cred: cred, ptokens: map[uint64]*pToken{}, itokens: map[uint64]int{},
		subs: map[uint64]*subscription{}, out: make(chan []byte, s.cfg.MaxQueuedEvents), gone: make(chan struct{})}
	s.mu.Lock()
	s.clients[cl] = struct{}{}
	s.mu.Unlock()
	defer s.dropClient(cl)
	defer close(cl.gone)
	go s.writeEvents(cl, log)
	log.Debug("tokenapi: client connected")

	buf := make([]byte, wire.MaxMessage+1)
	oob := make([]byte, unix.CmsgSpace(maxFDs*4))
	fdBuf := make([]int, 0, maxFDs)
	for {
		n, oobn, flags, _, err := c.ReadMsgUnix(buf, oob)
		fds := receivedFDs(fdBuf[:0], oob[:oobn])
		if err != nil || (n == 0 && oobn == 0) {
			closeFDs(fds)
			log.Debug("tokenapi: client gone", "err", err)
			return
		}
		reply := s.handle(ctx, cl, buf[:n], flags, fds)
		if err := cl.write(reply); err != nil {
			log.Debug("tokenapi: reply not delivered, dropping client", "err", err)
			return
		}
	}
}

// receivedFDs appends to fds the descriptors SCM_RIGHTS messages in oob
// brought; it walks the control messages in place (unix's parser
// allocates, and this runs for every request).
func receivedFDs(fds []int, oob []byte) []int {
	for len(oob) >= unix.SizeofCmsghdr {
		h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
		n := int(h.Len)
		if n < unix.SizeofCmsghdr || n > len(oob) {
			break
		}
		if data := oob[unix.CmsgLen(0):n]; h.Level == unix.SOL_SOCKET && h.Type == unix.SCM_RIGHTS && len(data)%4 == 0 {
			for ; len(data) >= 4; data = data[4:] {
				fds = append(fds, int(int32(binary.NativeEndian.Uint32(data))))
			}
		}
		if space := unix.CmsgSpace(n - unix.CmsgLen(0)); space < len(oob) {
			oob = oob[space:]
		} else {
			break
		}
	}
	return fds
}

func closeFDs(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}

// dropClient frees a client's pTokens and the iTokens only it held.
func (s *Server) dropClient(cl *clientConn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for h := range cl.ptokens {
		s.releaseLocked(cl, h)
	}
	for id, sub := range cl.subs {
		s.dropPeerLocked(cl, sub.last.itoken)
		delete(cl.subs, id)
	}
	delete(s.clients, cl)
}

func (s *Server) releaseLocked(cl *clientConn, h uint64) bool {
	pt, ok := cl.ptokens[h]
	if !ok {
		return false
	}
	delete(cl.ptokens, h)
	s.dropPeerLocked(cl, pt.itoken)
	return true
}

// Stats counts live clients, pTokens and iTokens (for obolctl and tests).
type Stats struct {
	Clients, PTokens, ITokens int
}

// Stats returns the current counts.
func (s *Server) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := Stats{Clients: len(s.clients), ITokens: len(s.peers)}
	for cl := range s.clients {
		st.PTokens += len(cl.ptokens)
	}
	return st
}

// handle answers one request; it always closes fds.
func (s *Server) handle(ctx context.Context, cl *clientConn, msg []byte, flags int, fds []int) []byte {
	defer func() { closeFDs(fds) }()
	h, _, err := wire.DecodeHeader(msg)
	if err != nil {
		return s.errorReply(h.ID, wire.ErrCodeBadMessage, err.Error())
	}
	if h.Version != wire.Version {
		b, _ := wire.NewBuilder(wire.TypeError, h.ID).U16(wire.AttrErrorCode, uint16(wire.ErrCodeUnsupportedVersion)).
			String(wire.AttrErrorText, fmt.Sprintf("protocol version %d is not supported; use version %d", h.Version, wire.Version)).
			U8(wire.AttrMaxVersion, wire.Version).Bytes()
		return b
	}
	if flags&unix.MSG_TRUNC != 0 {
		return s.errorReply(h.ID, wire.ErrCodeBadMessage, fmt.Sprintf("message longer than %d bytes", wire.MaxMessage))
	}
	m, err := wire.Decode(msg)
	if err != nil {
		return s.errorReply(h.ID, wire.ErrCodeBadMessage, err.Error())
	}
	if flags&unix.MSG_CTRUNC != 0 || len(fds) > 1 {
		return s.errorReply(h.ID, wire.ErrCodeTooManyFDs, "pass exactly one descriptor with PTOKEN_QUERY")
	}
	if m.Type == wire.TypeProtect && s.protector == nil {
		// Without a host side PROTECT is a type this server does not know,
		// whatever came with it.
		return s.errorReply(h.ID, wire.ErrCodeUnknownType, fmt.Sprintf("unknown request type %s", m.Type))
	}
	takesFD := m.Type == wire.TypePTokenQuery || m.Type == wire.TypeSubscribe || m.Type == wire.TypePTokenQueryFrom ||
		m.Type == wire.TypeProtect
	if !takesFD && len(fds) > 0 {
		return s.errorReply(h.ID, wire.ErrCodeTooManyFDs, m.Type.String()+" takes no descriptor")
	}
	if takesFD && len(fds) == 0 {
		return s.errorReply(h.ID, wire.ErrCodeNoFD, m.Type.String()+" needs the socket itself in SCM_RIGHTS; a descriptor number is not enough")
	}
	switch m.Type {
	case wire.TypePTokenQuery:
		fd := fds[0]
		fds = nil // query closes it as soon as it is inspected
		return s.query(ctx, cl, h.ID, fd)
	case wire.TypePTokenQueryFrom:
		fd := fds[0]
		fds = nil
		return s.queryFrom(ctx, cl, h.ID, m, fd)
	case wire.TypeSubscribe:
		fd := fds[0]
		fds = nil
		return s.subscribe(ctx, cl, h.ID, fd)
	case wire.TypeUnsubscribe:
		return s.unsubscribe(cl, h.ID, m)
	case wire.TypeProtect:
		lv, _ := m.U8(wire.AttrRequire)
		level := wire.Level(lv)
		if level == wire.LevelNone || level > wire.LevelClear {
			return s.errorReply(h.ID, wire.ErrCodeBadLevel, fmt.Sprintf("PROTECT needs REQUIRE = 1 (encryption), 2 (integrity), 3 (btns) or 4 (clear), got %d", lv))
		}
		fd := fds[0]
		fds = nil // protect closes it once the socket is pinned
		return s.protect(ctx, cl, h.ID, fd, level, m.String(wire.AttrPeerID))
	case wire.TypePTokenGet, wire.TypePTokenRelease:
		hd, ok := m.U64(wire.AttrPToken)
		if !ok {
			return s.errorReply(h.ID, wire.ErrCodeBadMessage, m.Type.String()+" needs a PTOKEN attribute")
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		pt, ok := cl.ptokens[hd]
		if !ok {
			return s.errorReply(h.ID, wire.ErrCodeUnknownHandle, "no such pToken on this connection; pTokens live only on the connection that made them")
		}
		if m.Type == wire.TypePTokenRelease {
			s.releaseLocked(cl, hd)
			b, _ := wire.NewBuilder(wire.TypeOK, h.ID).Bytes()
			return b
		}
		return withHeader(wire.TypePTokenReply, h.ID, pt.reply)
	case wire.TypeITokenGet:
		it, ok := m.U64(wire.AttrIToken)
		if !ok {
			return s.errorReply(h.ID, wire.ErrCodeBadMessage, "ITOKEN_GET needs an ITOKEN attribute")
		}
		s.mu.Lock()
		e, known := s.peers[it]
		learned := cl.itokens[it] > 0
		s.mu.Unlock()
		if !known || !learned {
			return s.errorReply(h.ID, wire.ErrCodeUnknownHandle, "no such iToken for this connection; get it from a live pToken first")
		}
		return s.itokenReply(h.ID, it, e)
	}
	return s.errorReply(h.ID, wire.ErrCodeUnknownType, fmt.Sprintf("unknown request type %s", m.Type))
}

func withHeader(t wire.Type, id uint32, body []byte) []byte {
	b, _ := wire.NewBuilder(t, id).Bytes()
	b = append(b, body...)
	binary.BigEndian.PutUint32(b[12:16], uint32(len(body)))
	return b
}

func (s *Server) errorReply(id uint32, code wire.ErrorCode, text string) []byte {
	b, _ := wire.NewBuilder(wire.TypeError, id).U16(wire.AttrErrorCode, uint16(code)).String(wire.AttrErrorText, text).Bytes()
	return b
}

func (s *Server) sendError(c *net.UnixConn, id uint32, code wire.ErrorCode, text string) {
	c.SetWriteDeadline(time.Now().Add(time.Second))
	c.Write(s.errorReply(id, code, text))
}

func (s *Server) query(ctx context.Context, cl *clientConn, id uint32, fd int) []byte {
	flow, err := InspectFD(fd)
	unix.Close(fd) // never kept past inspection
	if err != nil {
		return s.refusal(id, err)
	}
	return s.queryFlow(ctx, cl, id, flow)
}

// refusal turns an inspection error into its ERROR reply.
func (s *Server) refusal(id uint32, err error) []byte {
	var re *reqError
	if errors.As(err, &re) {
		return s.errorReply(id, re.code, re.text)
	}
	return s.errorReply(id, wire.ErrCodeInternal, err.Error())
}

// assessment is what the server tells about one flow: the attributes of a
// pToken (without its handle) and the peer behind its iToken.
type assessment struct {
	state flowState
	peer  *peerFacts // nil when no peer
}

// flowState is what an event compares: a change of any field is news.
type flowState struct {
	protected, privacy, integrity, compression bool
	itoken                                     uint64
	label                                      string
	ike, child                                 string // the covering CHILD_SA's conn and config
	why                                        wire.Reason
	whyText, audit                             string
}

// attrs adds the pToken attributes of st (all but PTOKEN) to b.
func (st flowState) attrs(b *wire.Builder) *wire.Builder {
	b.U64(wire.AttrIToken, st.itoken).
		Bool(wire.AttrProtected, st.protected).
		Bool(wire.AttrPrivacy, st.privacy).
		Bool(wire.AttrIntegrity, st.integrity).
		Bool(wire.AttrCompression, st.compression).
		String(wire.AttrAudit, st.audit).
		String(wire.AttrLabel, st.label)
	if st.why != wire.ReasonNone {
		b.U16(wire.AttrWhyCode, uint16(st.why)).String(wire.AttrWhyText, st.whyText)
	}
	return b
}

// assess looks flow up; the error is an ERROR reply's code and text.
func (s *Server) assess(ctx context.Context, flow Flow) (assessment, *reqError) {
	if q, ok := s.facts.(quickFacts); ok {
		if p, ok := q.protectionNow(flow); ok {
			return s.assessProtection(flow, p), nil
		}
	}
	fctx, cancel := context.WithTimeout(ctx, s.cfg.RequestTimeout)
	defer cancel()
	p, err := s.facts.Protection(fctx, flow)
	if err != nil {
		s.log.Warn("tokenapi: no facts for flow", "flow", flow, "err", err)
		if errors.Is(err, ErrUnavailable) || errors.Is(err, context.DeadlineExceeded) {
			return assessment{}, refuse(wire.ErrCodeUnavailable, "IPsec state is unavailable right now; retry shortly")
		}
		return assessment{}, refuse(wire.ErrCodeInternal, "looking up the flow failed; see obold's log")
	}
	return s.assessProtection(flow, p), nil
}

// assessProtection is what the server tells about flow given the host's
// facts p.
func (s *Server) assessProtection(flow Flow, p Protection) assessment {
	if !p.Protected && p.Why == wire.ReasonNone {
		p.Why = wire.ReasonUnknown
	}
	if p.Protected && len(p.LabelCandidates) <= 1 {
		// The usual answer: everything but the flow comes from the SA.
		sf := s.saFactsOf(p)
		return assessment{peer: sf.peer, state: flowState{
			protected: true, privacy: sf.how.Privacy, integrity: sf.how.Integrity, compression: sf.how.Compression,
			itoken: sf.itoken, label: p.Child.Label, ike: p.Child.IKEName, child: p.Child.Name,
			audit: withFlow(flow, sf.audit),
		}}
	}
	how := Classify(p, s.cfg.UntrustedCiphers)
	st := flowState{protected: p.Protected, privacy: how.Privacy, integrity: how.Integrity, compression: how.Compression}
	var a assessment
	if p.Protected {
		auth := DeriveAuthMethod(p.Peer)
		st.itoken = s.itokenHandle(identityKey(p.Peer, auth))
		st.label = p.Child.Label
		st.ike, st.child = p.Child.IKEName, p.Child.Name
		a.peer = &peerFacts{peer: p.Peer, auth: auth, audit: auditIToken(p.Peer, auth)}
		if len(p.LabelCandidates) > 1 {
			// Several labeled SAs cover the flow and the socket's label is
			// unknown: name no label, and claim only what all of them give.
			st.label, p.Child.Label = "", ""
			for _, c := range p.LabelCandidates {
				h := Classify(Protection{Protected: true, Child: c}, s.cfg.UntrustedCiphers)
				st.privacy, st.integrity, st.compression = st.privacy && h.Privacy, st.integrity && h.Integrity, st.compression && h.Compression
			}
			st.why, st.whyText = wire.ReasonLabelUnknown, labelUnknownText(flow, p.LabelCandidates)
			if p.PeerUnknown {
				// Nor can it say who the peer is.
				st.itoken, a.peer = 0, nil
				st.whyText += "; they belong to different peers, so no iToken is claimed either"
			}
		}
	} else {
		st.why, st.whyText = p.Why, p.WhyText
	}
	st.audit = auditPToken(flow, p, HowFacts{Privacy: st.privacy, Integrity: st.integrity, Compression: st.compression})
	if st.why == wire.ReasonLabelUnknown {
		st.audit += "; " + st.whyText
	}
	a.state = st
	return a
}

// saFactsOf derives what p's SA and peer give a pToken, or takes it from
// the memo when the facts named the SA (Protection.Memo).
func (s *Server) saFactsOf(p Protection) *saFacts {
	if p.Memo == 0 {
		return s.deriveSA(p)
	}
	s.memoMu.Lock()
	sf := s.memo[p.Memo]
	s.memoMu.Unlock()
	if sf != nil {
		return sf
	}
	sf = s.deriveSA(p)
	s.memoMu.Lock()
	if len(s.memo) >= maxMemo {
		clear(s.memo)
	}
	s.memo[p.Memo] = sf
	s.memoMu.Unlock()
	return sf
}

func (s *Server) deriveSA(p Protection) *saFacts {
	how := Classify(p, s.cfg.UntrustedCiphers)
	auth := DeriveAuthMethod(p.Peer)
	return &saFacts{
		how:    how,
		itoken: s.itokenHandle(identityKey(p.Peer, auth)),
		peer:   &peerFacts{peer: p.Peer, auth: auth, audit: auditIToken(p.Peer, auth)},
		audit:  auditSA(p, how),
	}
}

func labelUnknownText(flow Flow, cands []Child) string {
	labels := make([]string, 0, len(cands))
	for _, c := range cands {
		labels = append(labels, strconv.Quote(c.Label))
	}
	return fmt.Sprintf("%d labeled CHILD_SAs (labels %s) cover this flow and the socket's peer security context (SO_PEERSEC) is unknown, so no label is claimed",
		len(cands), strings.Join(labels, ", "))
}

func (s *Server) queryFlow(ctx context.Context, cl *clientConn, id uint32, flow Flow) []byte {
	if rerr := s.ptokenRoom(cl); rerr != nil {
		return s.errorReply(id, rerr.code, rerr.text)
	}
	a, rerr := s.assess(ctx, flow)
	if rerr != nil {
		return s.errorReply(id, rerr.code, rerr.text)
	}
	return s.newPToken(cl, id, wire.TypePTokenReply, a, a.state, nil)
}

// ptokenRoom refuses a request that would make one pToken more than
// max_ptokens_per_client; asked before any work, checked again when the
// pToken is made.
func (s *Server) ptokenRoom(cl *clientConn) *reqError {
	s.mu.Lock()
	full := len(cl.ptokens) >= s.cfg.MaxPTokens
	s.mu.Unlock()
	if full {
		return refuse(wire.ErrCodeLimit, "this connection holds %d pTokens; release some (PTOKEN_RELEASE)", s.cfg.MaxPTokens)
	}
	return nil
}

// newPToken registers a pToken of a on cl and returns the reply of type t
// carrying it: the pToken attributes of shown (a.state, or a.state with
// what a PROTECT refusal says instead), then extra's. PTOKEN_GET answers
// with a.state's attributes alone.
func (s *Server) newPToken(cl *clientConn, id uint32, t wire.Type, a assessment, shown flowState, extra func(*wire.Builder)) []byte {
	b := shown.attrs(wire.NewBuilder(t, id).U64(wire.AttrPToken, 0)) // handle set below
	if extra != nil {
		extra(b)
	}
	msg, err := b.Bytes()
	if err != nil {
		return s.errorReply(id, wire.ErrCodeInternal, err.Error())
	}
	stored := msg // the reply is only written, never changed: share it
	if extra != nil || shown != a.state {
		if stored, err = a.state.attrs(wire.NewBuilder(wire.TypePTokenReply, id).U64(wire.AttrPToken, 0)).Bytes(); err != nil {
			return s.errorReply(id, wire.ErrCodeInternal, err.Error())
		}
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	if len(cl.ptokens) >= s.cfg.MaxPTokens {
		return s.errorReply(id, wire.ErrCodeLimit, fmt.Sprintf("this connection holds %d pTokens; release some (PTOKEN_RELEASE)", s.cfg.MaxPTokens))
	}
	cl.next++
	h := cl.next
	// PTOKEN is the first attribute of both: its value follows the
	// 4-byte attribute header.
	binary.BigEndian.PutUint64(msg[wire.HeaderLen+4:wire.HeaderLen+12], h)
	binary.BigEndian.PutUint64(stored[wire.HeaderLen+4:wire.HeaderLen+12], h)
	cl.ptokens[h] = &pToken{reply: stored[wire.HeaderLen:], itoken: a.state.itoken}
	s.holdPeerLocked(cl, a.state.itoken, a.peer)
	return msg
}

// holdPeerLocked counts one more reference of cl to iToken it (a pToken or
// a subscription), so ITOKEN_GET answers for it.
func (s *Server) holdPeerLocked(cl *clientConn, it uint64, pf *peerFacts) {
	if it == 0 || pf == nil {
		return
	}
	if e := s.peers[it]; e != nil {
		e.facts = pf // the latest facts win
		e.refs++
	} else {
		s.peers[it] = &peerEntry{refs: 1, facts: pf}
	}
	cl.itokens[it]++
}

// dropPeerLocked undoes one holdPeerLocked.
func (s *Server) dropPeerLocked(cl *clientConn, it uint64) {
	if it == 0 {
		return
	}
	if cl.itokens[it]--; cl.itokens[it] <= 0 {
		delete(cl.itokens, it)
	}
	if e := s.peers[it]; e != nil {
		if e.refs--; e.refs <= 0 {
			delete(s.peers, it)
		}
	}
}

// itokenHandle maps an identity key into the server's handle space:
// HMAC-SHA256 under the server's secret, first 8 bytes, never 0.
func (s *Server) itokenHandle(key []byte) uint64 {
	m := hmac.New(sha256.New, s.secret[:])
	m.Write(key)
	h := binary.BigEndian.Uint64(m.Sum(nil))
	if h == 0 {
		h = 1
	}
	return h
}

func (s *Server) itokenReply(id uint32, it uint64, e *peerEntry) []byte {
	s.mu.Lock()
	pf := e.facts
	s.mu.Unlock()
	peer, auth, audit := pf.peer, pf.auth, pf.audit
	b, err := wire.NewBuilder(wire.TypeITokenReply, id).
		U64(wire.AttrIToken, it).
		U8(wire.AttrAuthMethod, uint8(auth.Method)).
		String(wire.AttrAudit, audit).
		String(wire.AttrRemoteID, peer.RemoteID).
		String(wire.AttrCertDN, auth.CertDN).
		String(wire.AttrCADN, auth.CADN).
		String(wire.AttrPubKeyID, PubKeyID(peer.PeerKey)).
		Blob(wire.AttrChannelBinding, ChannelBinding(peer.PeerKey, peer.OurKey)).
		Bytes()
	if err != nil {
		return s.errorReply(id, wire.ErrCodeInternal, err.Error())
	}
	return b
}

// closeRights closes the descriptors an SCM_RIGHTS message brought in.
func closeRights(oob []byte) {
	msgs, err := syscall.ParseSocketControlMessage(oob)
	if err != nil {
		return
	}
	for _, m := range msgs {
		if fds, err := syscall.ParseUnixRights(&m); err == nil {
			for _, fd := range fds {
				syscall.Close(fd)
			}
		}
	}
}
