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
	"os"
	"os/user"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"time"

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

	// protector is the host's side of PROTECT; nil: PROTECT is unknown.
	protector Protector
	lowerGIDs []uint32 // tokenapi.lower_groups, resolved

	mu      sync.Mutex
	peers   map[uint64]*peerEntry // live iTokens, by handle
	clients map[*clientConn]struct{}
}

type peerEntry struct {
	refs  int // live pTokens referring to it, over all clients
	peer  Peer
	auth  AuthFacts
	audit string
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
	s := &Server{cfg: cfg, facts: facts, log: log, peers: map[uint64]*peerEntry{}, clients: map[*clientConn]struct{}{}}
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
	cl := &clientConn{conn: c, cred: cred, ptokens: map[uint64]*pToken{}, itokens: map[uint64]int{}}
	s.mu.Lock()
	s.clients[cl] = struct{}{}
	s.mu.Unlock()
	defer s.dropClient(cl)
	log.Debug("tokenapi: client connected")

	buf := make([]byte, wire.MaxMessage+1)
	oob := make([]byte, unix.CmsgSpace(maxFDs*4))
	for {
		n, oobn, flags, _, err := c.ReadMsgUnix(buf, oob)
		fds := receivedFDs(oob[:oobn])
		if err != nil || (n == 0 && oobn == 0) {
			closeFDs(fds)
			log.Debug("tokenapi: client gone", "err", err)
			return
		}
		reply := s.handle(ctx, cl, buf[:n], flags, fds)
		c.SetWriteDeadline(time.Now().Add(writeTimeout))
		if _, err := c.Write(reply); err != nil {
			log.Debug("tokenapi: reply not delivered, dropping client", "err", err)
			return
		}
	}
}

func receivedFDs(oob []byte) []int {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil
	}
	var fds []int
	for _, m := range msgs {
		if f, err := unix.ParseUnixRights(&m); err == nil {
			fds = append(fds, f...)
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
	delete(s.clients, cl)
}

func (s *Server) releaseLocked(cl *clientConn, h uint64) bool {
	pt, ok := cl.ptokens[h]
	if !ok {
		return false
	}
	delete(cl.ptokens, h)
	if pt.itoken != 0 {
		if cl.itokens[pt.itoken]--; cl.itokens[pt.itoken] <= 0 {
			delete(cl.itokens, pt.itoken)
		}
		if e := s.peers[pt.itoken]; e != nil {
			if e.refs--; e.refs <= 0 {
				delete(s.peers, pt.itoken)
			}
		}
	}
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
	if m.Type != wire.TypePTokenQuery && m.Type != wire.TypeProtect && len(fds) > 0 {
		return s.errorReply(h.ID, wire.ErrCodeTooManyFDs, m.Type.String()+" takes no descriptor")
	}
	switch m.Type {
	case wire.TypePTokenQuery:
		if len(fds) == 0 {
			return s.errorReply(h.ID, wire.ErrCodeNoFD, "PTOKEN_QUERY needs the socket itself in SCM_RIGHTS; a descriptor number is not enough")
		}
		fd := fds[0]
		fds = nil // query closes it as soon as it is inspected
		return s.query(ctx, cl, h.ID, fd)
	case wire.TypeProtect:
		if s.protector == nil {
			break
		}
		if len(fds) == 0 {
			return s.errorReply(h.ID, wire.ErrCodeNoFD, "PROTECT needs the socket itself in SCM_RIGHTS; a descriptor number is not enough")
		}
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
		var re *reqError
		if errors.As(err, &re) {
			return s.errorReply(id, re.code, re.text)
		}
		return s.errorReply(id, wire.ErrCodeInternal, err.Error())
	}
	s.mu.Lock()
	full := len(cl.ptokens) >= s.cfg.MaxPTokens
	s.mu.Unlock()
	if full {
		return s.errorReply(id, wire.ErrCodeLimit, fmt.Sprintf("this connection holds %d pTokens; release some (PTOKEN_RELEASE)", s.cfg.MaxPTokens))
	}
	fctx, cancel := context.WithTimeout(ctx, s.cfg.RequestTimeout)
	defer cancel()
	p, err := s.facts.Protection(fctx, flow)
	if err != nil {
		s.log.Warn("tokenapi: no facts for flow", "flow", flow, "err", err)
		if errors.Is(err, ErrUnavailable) || errors.Is(err, context.DeadlineExceeded) {
			return s.errorReply(id, wire.ErrCodeUnavailable, "IPsec state is unavailable right now; retry shortly")
		}
		return s.errorReply(id, wire.ErrCodeInternal, "looking up the flow failed; see obold's log")
	}
	return s.newPToken(cl, id, wire.TypePTokenReply, flow, p, nil)
}

// newPToken registers a pToken for flow on cl and returns the reply of
// type t carrying it; extra adds attributes after the pToken's.
func (s *Server) newPToken(cl *clientConn, id uint32, t wire.Type, flow Flow, p Protection, extra func(*wire.Builder)) []byte {
	if !p.Protected && p.Why == wire.ReasonNone {
		p.Why = wire.ReasonUnknown
	}
	how := Classify(p, s.cfg.UntrustedCiphers)

	var itoken uint64
	var entry *peerEntry
	if p.Protected {
		auth := DeriveAuthMethod(p.Peer)
		itoken = s.itokenHandle(identityKey(p.Peer, auth))
		entry = &peerEntry{peer: p.Peer, auth: auth, audit: auditIToken(p.Peer, auth)}
	}
	body := wire.NewBuilder(t, id).
		U64(wire.AttrPToken, 0). // placeholder, set below
		U64(wire.AttrIToken, itoken).
		Bool(wire.AttrProtected, p.Protected).
		Bool(wire.AttrPrivacy, how.Privacy).
		Bool(wire.AttrIntegrity, how.Integrity).
		Bool(wire.AttrCompression, how.Compression).
		String(wire.AttrAudit, auditPToken(flow, p, how))
	if p.Protected {
		body.String(wire.AttrLabel, p.Child.Label)
	} else {
		body.U16(wire.AttrWhyCode, uint16(p.Why)).String(wire.AttrWhyText, p.WhyText)
	}
	msg, err := body.Bytes()
	if err != nil {
		return s.errorReply(id, wire.ErrCodeInternal, err.Error())
	}
	ptokenEnd := len(msg) // PTOKEN_GET answers with the pToken's attributes alone
	if extra != nil {
		eb := wire.NewBuilder(t, id)
		extra(eb)
		more, err := eb.Bytes()
		if err != nil {
			return s.errorReply(id, wire.ErrCodeInternal, err.Error())
		}
		msg = append(msg, more[wire.HeaderLen:]...)
		binary.BigEndian.PutUint32(msg[12:16], uint32(len(msg)-wire.HeaderLen))
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	if len(cl.ptokens) >= s.cfg.MaxPTokens {
		return s.errorReply(id, wire.ErrCodeLimit, fmt.Sprintf("this connection holds %d pTokens; release some (PTOKEN_RELEASE)", s.cfg.MaxPTokens))
	}
	cl.next++
	h := cl.next
	binary.BigEndian.PutUint64(msg[wire.HeaderLen+4:wire.HeaderLen+12], h)
	reply := slices.Clone(msg[wire.HeaderLen:ptokenEnd])
	cl.ptokens[h] = &pToken{reply: reply, itoken: itoken}
	if itoken != 0 {
		if e := s.peers[itoken]; e != nil {
			e.peer, e.auth, e.audit = entry.peer, entry.auth, entry.audit // the latest facts win
			e.refs++
		} else {
			entry.refs = 1
			s.peers[itoken] = entry
		}
		cl.itokens[itoken]++
	}
	return msg
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
	peer, auth, audit := e.peer, e.auth, e.audit
	s.mu.Unlock()
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
