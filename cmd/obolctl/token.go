package main

import (
	"context"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/obol-ipsec/obol/tokenapi/client"
	"github.com/obol-ipsec/obol/tokenapi/wire"
)

const tokenUsage = `Usage:
  obolctl token connect HOST:PORT [--require encryption|integrity|btns|clear [--peer ID]] [--token-socket PATH] [--json]
  obolctl token inspect --pid PID --fd FD [--token-socket PATH] [--json]

Ask obold's token API how a socket's traffic is protected (pToken: protected,
privacy, integrity, compression, label, and why not) and who the
authenticated peer is (iToken: identity, authentication method, DNs,
pubKeyID, channel binding).

connect  opens a TCP connection to HOST:PORT and asks about it: how would my
         traffic to HOST:PORT be protected, and who answers? With --require
         it asks obold for that protection first and prints the grant or
         the refusal.
inspect  asks about a socket a running process holds (needs root or ptrace
         rights over the process).

The token socket is /run/obol/token.sock unless --token-socket or
OBOL_TOKEN_SOCKET says otherwise. Run "obolctl token COMMAND --help" for more.`

const tokenConnectHelp = `Opens a TCP connection to HOST:PORT (giving up after the global --timeout),
passes the socket to obold's token API and prints its pToken (how the flow is
protected, or why it is not) and, when an SA covers it, its iToken (who the
authenticated peer is). The connection is closed without sending anything.

--require asks obold to protect the connection first (PROTECT): encryption
(an authenticated peer), btns (encryption, any peer), integrity, or clear
(less than policy: needs CAP_NET_ADMIN or a tokenapi.lower_groups group).
--peer names the IKE identity the peer must have. obold reuses or brings up
an SA (OE or a configured conn) and pins the socket so nothing leaves in
clear; the grant or the refusal (with WHY) is printed. A refusal exits 1.`

const tokenInspectHelp = `Duplicates descriptor FD of process PID (pidfd_getfd(2), which needs root or
ptrace rights over PID), passes it to obold's token API and prints its pToken
and iToken, then closes the duplicate. The process's socket is not touched.
"ls -l /proc/PID/fd" or "ss -tnp" show which descriptors are sockets.`

func (e *env) token(args []string) error {
	if len(args) > 0 {
		switch args[0] {
		case "connect":
			return e.tokenConnect(args[1:])
		case "inspect":
			return e.tokenInspect(args[1:])
		}
	}
	fmt.Fprintln(e.stderr, tokenUsage)
	if len(args) > 0 && (args[0] == "--help" || args[0] == "-h" || args[0] == "help") {
		return errHelp
	}
	return errUsage
}

// tokenSocketFlag adds --token-socket, defaulting to OBOL_TOKEN_SOCKET or
// client.DefaultSocket.
func tokenSocketFlag(fs *flag.FlagSet) *string {
	def := os.Getenv("OBOL_TOKEN_SOCKET")
	if def == "" {
		def = client.DefaultSocket
	}
	return fs.String("token-socket", def, "obold's token API socket `PATH` (env OBOL_TOKEN_SOCKET)")
}

func (e *env) tokenConnect(args []string) error {
	fs := e.flags("token connect", "token connect HOST:PORT [--require LEVEL [--peer ID]] [--token-socket PATH] [--json]", tokenConnectHelp)
	sock := tokenSocketFlag(fs)
	asJSON := fs.Bool("json", false, "print JSON")
	require := fs.String("require", "", "ask for `LEVEL` of protection first: encryption, integrity, btns or clear")
	peer := fs.String("peer", "", "with --require: the IKE `ID` the peer must have")
	target, err := e.parseOne(fs, args)
	if err != nil {
		return err
	}
	var level wire.Level
	if *require != "" {
		if level, err = wire.ParseLevel(*require); err != nil {
			return err
		}
	} else if *peer != "" {
		return fmt.Errorf("--peer needs --require; e.g. --require encryption --peer %s", *peer)
	}
	if _, _, err := net.SplitHostPort(target); err != nil {
		return fmt.Errorf("%q is not HOST:PORT; give e.g. obolctl token connect 192.0.2.11:443", target)
	}
	ctx, cancel := context.WithTimeout(context.Background(), e.timeout)
	defer cancel()
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", target)
	if err != nil {
		return fmt.Errorf("connect to %s: %w (is something listening there? raise --timeout if IKE needs longer)", target, err)
	}
	defer c.Close()
	if level != wire.LevelNone {
		r, err := protectTokens(ctx, *sock, c.(*net.TCPConn), client.Request{Level: level, PeerID: *peer})
		if err != nil {
			return err
		}
		r.Local, r.Remote = c.LocalAddr().String(), c.RemoteAddr().String()
		if err := e.printToken(r, *asJSON); err != nil {
			return err
		}
		if r.Grant.Granted == wire.LevelNone.String() {
			return fmt.Errorf("refused: %s: %s", r.Grant.Why, r.Grant.WhyText)
		}
		return nil
	}
	r, err := queryTokens(ctx, *sock, c.(*net.TCPConn))
	if err != nil {
		return err
	}
	r.Local, r.Remote = c.LocalAddr().String(), c.RemoteAddr().String()
	return e.printToken(r, *asJSON)
}

// grantReport is what PROTECT answered.
type grantReport struct {
	Required string `json:"required"`
	Granted  string `json:"granted"` // NONE when refused
	Pin      string `json:"pin"`
	Iface    string `json:"iface,omitempty"`
	PeerID   string `json:"peer_id,omitempty"`
	Why      string `json:"why,omitempty"`
	WhyText  string `json:"why_text,omitempty"`
}

// protectTokens asks the token API at sock to protect s as req says and
// reports the grant with the flow's tokens after the action.
func protectTokens(ctx context.Context, sock string, s syscall.Conn, req client.Request) (tokenReport, error) {
	tc, err := client.Dial(ctx, sock)
	if err != nil {
		return tokenReport{}, fmt.Errorf("%w; give its path with --token-socket or OBOL_TOKEN_SOCKET", err)
	}
	defer tc.Close()
	g, err := tc.Protect(ctx, s, req)
	if err != nil {
		return tokenReport{}, explainTokenErr(err)
	}
	r, err := reportTokens(ctx, tc, g.PToken)
	if err != nil {
		return tokenReport{}, err
	}
	r.Grant = &grantReport{Required: req.Level.String(), Granted: g.Granted.String(), Pin: g.Pin.String(), Iface: g.Iface, PeerID: g.PeerID}
	if g.Refused() {
		r.Grant.Why, r.Grant.WhyText = g.PToken.Why.String(), g.PToken.WhyText
	}
	return r, nil
}

func (e *env) tokenInspect(args []string) error {
	fs := e.flags("token inspect", "token inspect --pid PID --fd FD [--token-socket PATH] [--json]", tokenInspectHelp)
	sock := tokenSocketFlag(fs)
	asJSON := fs.Bool("json", false, "print JSON")
	pid := fs.Int("pid", 0, "the process holding the socket")
	fd := fs.Int("fd", -1, "the socket's descriptor number in that process")
	if err := e.parse(fs, args); err != nil {
		return err
	}
	if *pid <= 0 || *fd < 0 {
		fmt.Fprintln(e.stderr, "obolctl: token inspect needs --pid PID and --fd FD")
		fs.Usage()
		return errUsage
	}
	f, err := grabFD(*pid, *fd)
	if err != nil {
		return err
	}
	defer f.Close()
	// net.FileConn dups f once more; it tells a socket from anything else
	// and gives the socket's addresses.
	c, err := net.FileConn(f)
	if err != nil {
		if errors.Is(err, syscall.ENOTSOCK) {
			return fmt.Errorf("descriptor %d of process %d is not a socket; pick a socket from ls -l /proc/%d/fd", *fd, *pid, *pid)
		}
		return fmt.Errorf("descriptor %d of process %d: %w (only TCP, UDP and SCTP sockets have pTokens)", *fd, *pid, err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), e.timeout)
	defer cancel()
	r, err := queryTokens(ctx, *sock, f)
	if err != nil {
		return err
	}
	r.PID, r.FD = *pid, *fd
	r.Local = addrString(c.LocalAddr())
	r.Remote = addrString(c.RemoteAddr())
	return e.printToken(r, *asJSON)
}

// grabFD duplicates descriptor fd of process pid into this process.
func grabFD(pid, fd int) (*os.File, error) {
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		if errors.Is(err, unix.ESRCH) {
			return nil, fmt.Errorf("no process %d: %w; check the PID with ps or ss -tnp", pid, err)
		}
		return nil, fmt.Errorf("pidfd_open(%d): %w (needs Linux 5.3 or later)", pid, err)
	}
	defer unix.Close(pidfd)
	nfd, err := unix.PidfdGetfd(pidfd, fd, 0)
	switch {
	case err == nil:
		return os.NewFile(uintptr(nfd), fmt.Sprintf("pid %d fd %d", pid, fd)), nil
	case errors.Is(err, unix.EPERM):
		return nil, fmt.Errorf("cannot take descriptor %d of process %d: %w; needs root or ptrace rights over %d (run with sudo)", fd, pid, err, pid)
	case errors.Is(err, unix.EBADF):
		return nil, fmt.Errorf("process %d has no descriptor %d: %w; see ls -l /proc/%d/fd", pid, fd, err, pid)
	case errors.Is(err, unix.ESRCH):
		return nil, fmt.Errorf("process %d has exited: %w", pid, err)
	case errors.Is(err, unix.ENOSYS):
		return nil, fmt.Errorf("pidfd_getfd: %w; needs Linux 5.6 or later", err)
	}
	return nil, fmt.Errorf("cannot take descriptor %d of process %d: %w", fd, pid, err)
}

func addrString(a net.Addr) string {
	if a == nil {
		return ""
	}
	return a.String()
}

// tokenReport is what token connect and token inspect print.
type tokenReport struct {
	PID    int           `json:"pid,omitempty"`
	FD     int           `json:"fd,omitempty"`
	Local  string        `json:"local,omitempty"`
	Remote string        `json:"remote,omitempty"`
	Grant  *grantReport  `json:"grant,omitempty"`
	PToken pTokenReport  `json:"ptoken"`
	IToken *iTokenReport `json:"itoken,omitempty"`
}

type pTokenReport struct {
	Protected   bool   `json:"protected"`
	Privacy     bool   `json:"privacy"`
	Integrity   bool   `json:"integrity"`
	Compression bool   `json:"compression"`
	Label       string `json:"label,omitempty"`
	Audit       string `json:"audit,omitempty"`
	Why         string `json:"why,omitempty"`
	WhyText     string `json:"why_text,omitempty"`
	IToken      string `json:"itoken,omitempty"`
}

type iTokenReport struct {
	Handle         string `json:"handle"`
	AuthMethod     string `json:"auth_method"`
	RemoteID       string `json:"remote_id,omitempty"`
	CertDN         string `json:"cert_dn,omitempty"`
	CADN           string `json:"ca_dn,omitempty"`
	PubKeyID       string `json:"pubkey_id,omitempty"`
	ChannelBinding string `json:"channel_binding,omitempty"` // hex
	Audit          string `json:"audit,omitempty"`
}

func handleString(h uint64) string { return fmt.Sprintf("%016x", h) }

// queryTokens asks the token API at sock about s: its pToken and, when a
// peer is known, its iToken.
func queryTokens(ctx context.Context, sock string, s syscall.Conn) (tokenReport, error) {
	tc, err := client.Dial(ctx, sock)
	if err != nil {
		return tokenReport{}, fmt.Errorf("%w; give its path with --token-socket or OBOL_TOKEN_SOCKET", err)
	}
	defer tc.Close() // frees the pToken
	pt, err := tc.PToken(ctx, s)
	if err != nil {
		return tokenReport{}, explainTokenErr(err)
	}
	return reportTokens(ctx, tc, pt)
}

// reportTokens reports pt and, when a peer is known, its iToken.
func reportTokens(ctx context.Context, tc *client.Client, pt client.PToken) (tokenReport, error) {
	r := tokenReport{PToken: pTokenReport{
		Protected: pt.Protected, Privacy: pt.Privacy, Integrity: pt.Integrity, Compression: pt.Compression,
		Label: pt.Label, Audit: pt.Audit,
	}}
	if !pt.Protected {
		r.PToken.Why, r.PToken.WhyText = pt.Why.String(), pt.WhyText
	}
	if pt.IToken == 0 {
		return r, nil
	}
	r.PToken.IToken = handleString(uint64(pt.IToken))
	it, err := tc.IToken(ctx, pt.IToken)
	if err != nil {
		return tokenReport{}, fmt.Errorf("iToken %s: %w", r.PToken.IToken, err)
	}
	r.IToken = &iTokenReport{
		Handle: handleString(uint64(it.Handle)), AuthMethod: it.AuthMethod.String(), RemoteID: it.RemoteID,
		CertDN: it.CertDN, CADN: it.CADN, PubKeyID: it.PubKeyID, ChannelBinding: hex.EncodeToString(it.ChannelBinding),
		Audit: it.Audit,
	}
	return r, nil
}

func explainTokenErr(err error) error {
	switch {
	case client.IsCode(err, wire.ErrCodeDenied):
		return fmt.Errorf("%w (obold's [tokenapi] allow_uids/allow_gids do not admit you; run as root or ask the administrator)", err)
	case client.IsCode(err, wire.ErrCodeUnavailable):
		return fmt.Errorf("%w (is charon running? retry shortly)", err)
	case client.IsCode(err, wire.ErrCodeNotInet), client.IsCode(err, wire.ErrCodeUnsupportedProto):
		return fmt.Errorf("%w (only TCP, UDP and SCTP sockets have pTokens)", err)
	case client.IsCode(err, wire.ErrCodeNotConnected):
		return fmt.Errorf("%w (pick a connected socket, not a listening or unconnected one)", err)
	}
	return err
}

func (e *env) printToken(r tokenReport, asJSON bool) error {
	if asJSON {
		return e.printJSON(r)
	}
	printTokenReport(e.stdout, r)
	return nil
}

func printTokenReport(w io.Writer, r tokenReport) {
	if r.PID != 0 {
		field(w, "process", fmt.Sprintf("%d fd %d", r.PID, r.FD))
	}
	field(w, "flow", fmt.Sprintf("%s -> %s", dash(r.Local), dash(r.Remote)))
	if g := r.Grant; g != nil {
		if g.Granted == wire.LevelNone.String() {
			field(w, "grant", fmt.Sprintf("REFUSED (%s asked): %s: %s", strings.ToLower(g.Required), g.Why, dash(g.WhyText)))
		} else {
			field(w, "grant", fmt.Sprintf("%s (%s asked), peer %s", strings.ToLower(g.Granted), strings.ToLower(g.Required), dash(g.PeerID)))
		}
		pin := strings.ToLower(g.Pin)
		if g.Iface != "" {
			pin += " " + g.Iface
		}
		field(w, "pinned", pin)
	}
	p := r.PToken
	if p.Protected {
		field(w, "protected", fmt.Sprintf("yes: privacy %s, integrity %s, compression %s", yesNo(p.Privacy), yesNo(p.Integrity), yesNo(p.Compression)))
		field(w, "label", dash(p.Label))
	} else {
		field(w, "protected", fmt.Sprintf("no: %s: %s", p.Why, dash(p.WhyText)))
	}
	field(w, "audit", dash(p.Audit))
	if r.IToken == nil {
		field(w, "peer", "- (no authenticated peer)")
		return
	}
	i := r.IToken
	field(w, "peer", dash(i.RemoteID))
	field(w, "auth", i.AuthMethod)
	field(w, "cert DN", dash(i.CertDN))
	field(w, "CA DN", dash(i.CADN))
	field(w, "pubKeyID", dash(i.PubKeyID))
	field(w, "binding", dash(i.ChannelBinding))
	field(w, "iToken", i.Handle)
	field(w, "peer audit", dash(i.Audit))
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}
