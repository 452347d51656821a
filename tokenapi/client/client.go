// Package client is the Go client of obol's token API (tokenapi/PROTOCOL.md).
// A program passes one of its own sockets and learns how the flow is
// protected (PToken) and who the authenticated peer is (IToken).
//
//	c, err := client.Dial(ctx, client.DefaultSocket)
//	pt, err := c.PToken(ctx, tcpConn)
//	if !pt.Privacy { log.Printf("not private: %s %s", pt.Why, pt.WhyText) }
//	id, err := c.IToken(ctx, pt.IToken)
package client

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/obol-ipsec/obol/tokenapi/wire"
)

// DefaultSocket is obold's default token API socket.
const DefaultSocket = "/run/obol/token.sock"

// PTokenHandle names a pToken on one Client; it is meaningless elsewhere.
type PTokenHandle uint64

// ITokenHandle names an authenticated peer on this host: equal handles
// mean the same peer, across connections, rekeying and re-authentication,
// while obold runs. 0 means no peer.
type ITokenHandle uint64

// PToken is HOW a socket's flow is protected.
type PToken struct {
	Handle      PTokenHandle
	IToken      ITokenHandle
	Protected   bool // an SA covers the flow (it may still lack privacy)
	Privacy     bool
	Integrity   bool
	Compression bool
	Label       string // the SA's security label
	Audit       string
	// Why and WhyText say why the flow is not protected.
	Why     wire.Reason
	WhyText string
}

// IToken is WHO the peer is.
type IToken struct {
	Handle         ITokenHandle
	AuthMethod     wire.AuthMethod
	RemoteID       string
	CertDN         string
	CADN           string
	PubKeyID       string
	ChannelBinding []byte
	Audit          string
}

// Error is a refusal from the server.
type Error struct {
	Code wire.ErrorCode
	Text string
}

func (e *Error) Error() string { return fmt.Sprintf("token API: %s: %s", e.Code, e.Text) }

// IsCode reports whether err is a server refusal with code c.
func IsCode(err error, c wire.ErrorCode) bool {
	var e *Error
	return errors.As(err, &e) && e.Code == c
}

// Client is one connection to obold. Its pTokens live until Release or
// Close. Methods are safe for concurrent use; requests are serialized.
type Client struct {
	mu     sync.Mutex
	conn   *net.UnixConn
	nextID uint32
	buf    []byte
}

// Dial connects to the token API socket at path.
func Dial(ctx context.Context, path string) (*Client, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unixpacket", path)
	if err != nil {
		return nil, fmt.Errorf("token API: connect to %s: %w (is obold running with [tokenapi] enabled?)", path, err)
	}
	return &Client{conn: c.(*net.UnixConn), buf: make([]byte, wire.MaxMessage+1)}, nil
}

// Close ends the connection; obold frees its pTokens.
func (c *Client) Close() error { return c.conn.Close() }

// PToken asks about the flow of s, a connected TCP, UDP or SCTP socket the
// caller holds (*net.TCPConn, *net.UDPConn, *os.File, ...). The socket is
// passed to obold (SCM_RIGHTS), which only reads its addresses.
func (c *Client) PToken(ctx context.Context, s syscall.Conn) (PToken, error) {
	rc, err := s.SyscallConn()
	if err != nil {
		return PToken{}, fmt.Errorf("token API: cannot get the socket's descriptor: %w", err)
	}
	var m wire.Message
	var rerr error
	if err := rc.Control(func(fd uintptr) {
		m, rerr = c.roundTrip(ctx, wire.TypePTokenQuery, nil, []int{int(fd)})
	}); err != nil {
		return PToken{}, fmt.Errorf("token API: cannot use the socket's descriptor: %w", err)
	}
	if rerr != nil {
		return PToken{}, rerr
	}
	return decodePToken(m)
}

// Get returns a pToken again by its handle.
func (c *Client) Get(ctx context.Context, h PTokenHandle) (PToken, error) {
	m, err := c.roundTrip(ctx, wire.TypePTokenGet, func(b *wire.Builder) { b.U64(wire.AttrPToken, uint64(h)) }, nil)
	if err != nil {
		return PToken{}, err
	}
	return decodePToken(m)
}

// Release frees a pToken.
func (c *Client) Release(ctx context.Context, h PTokenHandle) error {
	_, err := c.roundTrip(ctx, wire.TypePTokenRelease, func(b *wire.Builder) { b.U64(wire.AttrPToken, uint64(h)) }, nil)
	return err
}

// IToken returns the peer behind an iToken this client got from a live pToken.
func (c *Client) IToken(ctx context.Context, h ITokenHandle) (IToken, error) {
	m, err := c.roundTrip(ctx, wire.TypeITokenGet, func(b *wire.Builder) { b.U64(wire.AttrIToken, uint64(h)) }, nil)
	if err != nil {
		return IToken{}, err
	}
	return decodeIToken(m)
}

func decodeIToken(m wire.Message) (IToken, error) {
	if m.Type != wire.TypeITokenReply {
		return IToken{}, fmt.Errorf("token API: got %s to ITOKEN_GET", m.Type)
	}
	it, _ := m.U64(wire.AttrIToken)
	am, _ := m.U8(wire.AttrAuthMethod)
	return IToken{
		Handle:         ITokenHandle(it),
		AuthMethod:     wire.AuthMethod(am),
		RemoteID:       m.String(wire.AttrRemoteID),
		CertDN:         m.String(wire.AttrCertDN),
		CADN:           m.String(wire.AttrCADN),
		PubKeyID:       m.String(wire.AttrPubKeyID),
		ChannelBinding: m.Bytes(wire.AttrChannelBinding),
		Audit:          m.String(wire.AttrAudit),
	}, nil
}

// Request is what Protect asks for.
type Request struct {
	Level wire.Level // ENCRYPTION, INTEGRITY, BTNS, or CLEAR (less than policy: needs privilege)
	// PeerID, when set, is the IKE identity the authenticated peer must have.
	PeerID string
}

// Grant is obold's answer to Protect.
type Grant struct {
	// Granted is the level in force; NONE when refused (then PToken.Why
	// and WhyText say why).
	Granted wire.Level
	// Pin says how obold fixed the socket; Iface is the device it is bound
	// to with PIN_DEVICE. A refused socket stays pinned unless CLEAR was
	// granted: its traffic never leaves in clear.
	Pin   wire.Pin
	Iface string
	// PeerID is the authenticated peer's IKE identity ("" when clear).
	PeerID string
	// PToken is the flow's pToken after the action.
	PToken PToken
}

// Refused tells whether obold did not grant what was asked.
func (g Grant) Refused() bool { return g.Granted == wire.LevelNone }

// Protect asks obold to protect the flow of s as r says: it reuses or brings
// up an SA and pins the socket so its traffic never leaves unprotected.
// It may take as long as an IKE negotiation; bound it with ctx.
func (c *Client) Protect(ctx context.Context, s syscall.Conn, r Request) (Grant, error) {
	rc, err := s.SyscallConn()
	if err != nil {
		return Grant{}, fmt.Errorf("token API: cannot get the socket's descriptor: %w", err)
	}
	var m wire.Message
	var rerr error
	if err := rc.Control(func(fd uintptr) {
		m, rerr = c.roundTrip(ctx, wire.TypeProtect, func(b *wire.Builder) {
			b.U8(wire.AttrRequire, uint8(r.Level)).String(wire.AttrPeerID, r.PeerID)
		}, []int{int(fd)})
	}); err != nil {
		return Grant{}, fmt.Errorf("token API: cannot use the socket's descriptor: %w", err)
	}
	if rerr != nil {
		return Grant{}, rerr
	}
	return decodeGrant(m)
}

func decodeGrant(m wire.Message) (Grant, error) {
	if m.Type != wire.TypeProtectReply {
		return Grant{}, fmt.Errorf("token API: got %s, want PROTECT_REPLY", m.Type)
	}
	g, _ := m.U8(wire.AttrGranted)
	pin, _ := m.U8(wire.AttrPin)
	m.Type = wire.TypePTokenReply // the same pToken attributes
	pt, err := decodePToken(m)
	if err != nil {
		return Grant{}, err
	}
	return Grant{Granted: wire.Level(g), Pin: wire.Pin(pin), Iface: m.String(wire.AttrPinIface), PeerID: m.String(wire.AttrRemoteID), PToken: pt}, nil
}

func decodePToken(m wire.Message) (PToken, error) {
	if m.Type != wire.TypePTokenReply {
		return PToken{}, fmt.Errorf("token API: got %s, want PTOKEN_REPLY", m.Type)
	}
	return ptokenFields(m), nil
}

// ptokenFields reads the pToken attributes of a PTOKEN_REPLY, SUBSCRIBED
// or EVENT.
func ptokenFields(m wire.Message) PToken {
	h, _ := m.U64(wire.AttrPToken)
	it, _ := m.U64(wire.AttrIToken)
	why, _ := m.U16(wire.AttrWhyCode)
	return PToken{
		Handle:      PTokenHandle(h),
		IToken:      ITokenHandle(it),
		Protected:   m.Bool(wire.AttrProtected),
		Privacy:     m.Bool(wire.AttrPrivacy),
		Integrity:   m.Bool(wire.AttrIntegrity),
		Compression: m.Bool(wire.AttrCompression),
		Label:       m.String(wire.AttrLabel),
		Audit:       m.String(wire.AttrAudit),
		Why:         wire.Reason(why),
		WhyText:     m.String(wire.AttrWhyText),
	}
}

// roundTrip sends one request (with fds as SCM_RIGHTS) and reads its reply.
func (c *Client) roundTrip(ctx context.Context, t wire.Type, attrs func(*wire.Builder), fds []int) (wire.Message, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.nextID++
	id := c.nextID
	b := wire.NewBuilder(t, id)
	if attrs != nil {
		attrs(b)
	}
	req, err := b.Bytes()
	if err != nil {
		return wire.Message{}, err
	}
	dl, ok := ctx.Deadline()
	if !ok {
		dl = time.Time{}
	}
	c.conn.SetDeadline(dl)
	fired := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		c.conn.SetDeadline(time.Unix(1, 0))
		close(fired)
	})
	defer func() {
		if !stop() {
			<-fired // the next request must not find this deadline
		}
	}()
	var oob []byte
	if len(fds) > 0 {
		oob = syscall.UnixRights(fds...)
	}
	if _, _, err := c.conn.WriteMsgUnix(req, oob, nil); err != nil {
		return wire.Message{}, ctxErr(ctx, fmt.Errorf("token API: send %s: %w", t, err))
	}
	for {
		n, err := c.conn.Read(c.buf)
		if err != nil {
			return wire.Message{}, ctxErr(ctx, fmt.Errorf("token API: read reply to %s: %w", t, err))
		}
		if n == 0 {
			return wire.Message{}, fmt.Errorf("token API: obold closed the connection")
		}
		// Decode a copy: the reply outlives c.buf's next read, and one
		// copy of the message is cheaper than one per attribute.
		m, err := wire.Decode(slices.Clone(c.buf[:n]))
		if err != nil {
			return wire.Message{}, fmt.Errorf("token API: bad reply to %s: %w", t, err)
		}
		if m.ID != id && m.ID != 0 {
			continue // a late reply to an abandoned request
		}
		if m.Type == wire.TypeError {
			code, _ := m.U16(wire.AttrErrorCode)
			return m, &Error{Code: wire.ErrorCode(code), Text: m.String(wire.AttrErrorText)}
		}
		return m, nil
	}
}

// ctxErr makes a deadline hit while waiting on the socket an error that
// matches the context's: the socket deadline may fire before ctx's timer.
func ctxErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("%w: %w", ctx.Err(), err)
	}
	if dl, ok := ctx.Deadline(); ok && errors.Is(err, os.ErrDeadlineExceeded) && !time.Now().Before(dl) {
		return fmt.Errorf("%w: %w", context.DeadlineExceeded, err)
	}
	return err
}
