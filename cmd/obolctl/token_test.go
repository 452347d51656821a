package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/obol-ipsec/obol/tokenapi"
	"github.com/obol-ipsec/obol/tokenapi/tokenapitest"
	"github.com/obol-ipsec/obol/tokenapi/wire"
)

var tokenPeer = tokenapi.Peer{
	RemoteID: "CN=moon",
	PeerKey:  tokenapi.PublicKey{Algorithm: "ed25519", Data: bytes.Repeat([]byte{0xA}, 32)},
	OurKey:   tokenapi.PublicKey{Algorithm: "ed25519", Data: bytes.Repeat([]byte{0x1}, 32)},
	Evidence: tokenapi.Evidence{ConnClass: "public key", TrustedCADN: "CN=Lab CA", PeerCertDN: "CN=moon"},
}

// startTokenAPI serves the token API on a temp socket with two loopback
// listeners: "esp" (protected by AES-GCM, peer CN=moon) and "clear" (no SA
// yet). It returns the socket path and the listeners' addresses.
func startTokenAPI(t *testing.T) (sock string, addrs map[string]string) {
	t.Helper()
	facts := tokenapitest.NewPortFacts()
	scen := map[string]tokenapi.Protection{
		"esp": {Protected: true, Peer: tokenPeer, Child: tokenapi.Child{IKEName: "moon", Name: "net", Protocol: "ESP", Mode: "TUNNEL",
			EncrAlg: "AES_GCM_16", EncrKey: 256, IPComp: true, Label: "system_u:object_r:web_t:s0"}},
		"clear": {Why: wire.ReasonNoSA, WhyText: "trap installed, IKE_SA negotiating"},
	}
	addrs = map[string]string{}
	for name, ln := range tokenapitest.Listeners(t, facts, scen) {
		addrs[name] = ln.Addr().String()
	}
	_, sock = tokenapitest.ServeProtect(t, tokenapi.Config{}, facts, loopProtector{})
	return sock, addrs
}

// loopProtector grants what an SA gives, pinning to lo as if it were the
// TUN device, and refuses every CLEAR request.
type loopProtector struct{}

func (loopProtector) PinTarget(context.Context) (tokenapi.PinTarget, error) {
	return tokenapi.PinTarget{Datapath: "userspace", Device: "lo"}, nil
}

func (loopProtector) Protect(_ context.Context, r tokenapi.ProtectRequest) (tokenapi.ProtectOutcome, error) {
	var out tokenapi.ProtectOutcome
	if r.Level == wire.LevelClear {
		out.Why, out.WhyText = wire.ReasonPolicyWins, "configured tunnel moon covers the flow"
	}
	return out, nil
}

// connFD dials addr and returns the connection's descriptor number in this
// process; the connection lives until the test ends.
func connFD(t *testing.T, addr string) string {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	rc, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var fd uintptr
	if err := rc.Control(func(f uintptr) { fd = f }); err != nil {
		t.Fatal(err)
	}
	return strconv.Itoa(int(fd))
}

func TestTokenCLI(t *testing.T) {
	sock, addrs := startTokenAPI(t)
	pid := strconv.Itoa(os.Getpid())
	espFD, clearFD := connFD(t, addrs["esp"]), connFD(t, addrs["clear"])
	f, err := os.Open("token_test.go")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fileFD := strconv.Itoa(int(f.Fd()))

	tests := []struct {
		name   string
		args   []string
		code   int
		stdout []string
		stderr string
		json   *tokenReport // when set, stdout is JSON equal to it but for addresses and handles
	}{
		{"usage", []string{"token"}, 2, nil, "obolctl token connect HOST:PORT", nil},
		{"help", []string{"token", "--help"}, 0, nil, "who the\nauthenticated peer is", nil},
		{"unknown sub", []string{"token", "frob"}, 2, nil, "Usage:", nil},
		{"connect help", []string{"token", "connect", "--help"}, 0, nil, "--token-socket PATH", nil},
		{"connect no target", []string{"token", "connect", "--token-socket", sock}, 2, nil, "Usage: obolctl token connect", nil},
		{"connect two targets", []string{"token", "connect", addrs["esp"], addrs["clear"]}, 2, nil, "unexpected argument", nil},
		{"connect not host:port", []string{"token", "connect", "127.0.0.1", "--token-socket", sock}, 1, nil, `"127.0.0.1" is not HOST:PORT`, nil},
		{"connect esp json", []string{"token", "connect", addrs["esp"], "--token-socket", sock, "--json"}, 0, nil, "", &tokenReport{
			PToken: pTokenReport{Protected: true, Privacy: true, Integrity: true, Compression: true, Label: "system_u:object_r:web_t:s0"},
			IToken: &iTokenReport{AuthMethod: "PKIX_INLINE", RemoteID: "CN=moon", CertDN: "CN=moon", CADN: "CN=Lab CA"},
		}},
		{"connect clear json", []string{"token", "connect", "--json", "--token-socket", sock, addrs["clear"]}, 0, nil, "", &tokenReport{
			PToken: pTokenReport{Why: "NO_SA", WhyText: "trap installed, IKE_SA negotiating"},
		}},
		{"connect esp text", []string{"token", "connect", addrs["esp"], "--token-socket", sock}, 0,
			[]string{"protected:  yes: privacy yes, integrity yes, compression yes", "peer:       CN=moon", "auth:       PKIX_INLINE", "CA DN:      CN=Lab CA"}, "", nil},
		{"connect clear text", []string{"token", "connect", addrs["clear"], "--token-socket", sock}, 0,
			[]string{"protected:  no: NO_SA: trap installed", "peer:       - (no authenticated peer)"}, "", nil},
		{"protect encryption", []string{"token", "connect", addrs["esp"], "--require", "encryption", "--token-socket", sock}, 0,
			[]string{"grant:      encryption (encryption asked), peer CN=moon", "pinned:     device lo", "protected:  yes"}, "", nil},
		{"protect peer matches", []string{"token", "connect", "--require", "btns", "--peer", "CN=moon", addrs["esp"], "--token-socket", sock}, 0,
			[]string{"grant:      encryption (btns asked), peer CN=moon"}, "", nil},
		{"protect peer differs", []string{"token", "connect", "--require", "encryption", "--peer", "@sun", addrs["esp"], "--token-socket", sock}, 1,
			[]string{"grant:      REFUSED (encryption asked): PEER_MISMATCH: the SA's authenticated peer is 'CN=moon', not '@sun'", "pinned:     device lo"}, "refused: PEER_MISMATCH", nil},
		{"protect no SA", []string{"token", "connect", "--require", "encryption", addrs["clear"], "--token-socket", sock}, 1,
			[]string{"REFUSED (encryption asked): NO_SA: trap installed"}, "refused: NO_SA", nil},
		{"lower refused", []string{"token", "connect", "--require", "clear", addrs["clear"], "--token-socket", sock, "--json"}, 1, nil, "refused: POLICY_WINS", &tokenReport{
			Grant:  &grantReport{Required: "CLEAR", Granted: "NONE", Pin: "DEVICE", Iface: "lo", Why: "POLICY_WINS", WhyText: "configured tunnel moon covers the flow"},
			PToken: pTokenReport{Why: "POLICY_WINS", WhyText: "configured tunnel moon covers the flow"},
		}},
		{"protect bad level", []string{"token", "connect", "--require", "max", addrs["esp"]}, 1, nil, `unknown protection level "max"`, nil},
		{"peer without require", []string{"token", "connect", "--peer", "x", addrs["esp"]}, 1, nil, "--peer needs --require", nil},
		{"connect refused", []string{"token", "connect", "127.0.0.1:1", "--token-socket", sock}, 1, nil, "is something listening there?", nil},
		{"no token socket", []string{"token", "connect", addrs["esp"], "--token-socket", "/nonexistent/token.sock"}, 1, nil, "is obold running with [tokenapi] enabled?", nil},
		{"inspect esp json", []string{"token", "inspect", "--pid", pid, "--fd", espFD, "--token-socket", sock, "--json"}, 0, nil, "", &tokenReport{
			PToken: pTokenReport{Protected: true, Privacy: true, Integrity: true, Compression: true, Label: "system_u:object_r:web_t:s0"},
			IToken: &iTokenReport{AuthMethod: "PKIX_INLINE", RemoteID: "CN=moon", CertDN: "CN=moon", CADN: "CN=Lab CA"},
		}},
		{"inspect clear text", []string{"token", "inspect", "--pid", pid, "--fd", clearFD, "--token-socket", sock}, 0,
			[]string{"process:    " + pid + " fd " + clearFD, "-> " + addrs["clear"], "protected:  no: NO_SA"}, "", nil},
		{"inspect no pid", []string{"token", "inspect", "--fd", "3"}, 2, nil, "needs --pid PID and --fd FD", nil},
		{"inspect bad pid", []string{"token", "inspect", "--pid", "x", "--fd", "3"}, 2, nil, "invalid value", nil},
		{"inspect extra arg", []string{"token", "inspect", "--pid", pid, "--fd", "3", "more"}, 2, nil, `unexpected argument "more"`, nil},
		{"inspect unknown pid", []string{"token", "inspect", "--pid", "2147483600", "--fd", "3", "--token-socket", sock}, 1, nil, "no process 2147483600", nil},
		{"inspect no such fd", []string{"token", "inspect", "--pid", pid, "--fd", "99999", "--token-socket", sock}, 1, nil, "has no descriptor 99999", nil},
		{"inspect not a socket", []string{"token", "inspect", "--pid", pid, "--fd", fileFD, "--token-socket", sock}, 1, nil, "is not a socket", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out := expectRun(t, tt.args, tt.code, tt.stdout, tt.stderr)
			if tt.json == nil {
				return
			}
			var got tokenReport
			if err := json.Unmarshal([]byte(out), &got); err != nil {
				t.Fatalf("stdout is not JSON: %v\n%s", err, out)
			}
			if got.Local == "" || got.Remote == "" || got.PToken.Audit == "" {
				t.Errorf("no addresses or audit: %+v", got)
			}
			want := *tt.json
			want.PID, want.FD, want.Local, want.Remote, want.PToken.Audit = got.PID, got.FD, got.Local, got.Remote, got.PToken.Audit
			if want.IToken != nil {
				if got.IToken == nil || got.IToken.Handle != got.PToken.IToken || len(got.IToken.ChannelBinding) != 2*(2+32+2+32) || got.IToken.PubKeyID == "" {
					t.Fatalf("iToken %+v for pToken %+v: want the pToken's handle, a pubKeyID and a 68-byte channel binding", got.IToken, got.PToken)
				}
				it := *want.IToken
				it.Handle, it.ChannelBinding, it.PubKeyID, it.Audit = got.IToken.Handle, got.IToken.ChannelBinding, got.IToken.PubKeyID, got.IToken.Audit
				want.IToken, want.PToken.IToken = &it, got.PToken.IToken
			}
			gj, _ := json.Marshal(got)
			wj, _ := json.Marshal(want)
			if !bytes.Equal(gj, wj) {
				t.Errorf("got  %s\nwant %s", gj, wj)
			}
		})
	}
}

func TestTokenSocketEnv(t *testing.T) {
	sock, addrs := startTokenAPI(t)
	t.Setenv("OBOL_TOKEN_SOCKET", sock)
	var out, errb bytes.Buffer
	if code := run([]string{"token", "connect", addrs["clear"]}, &out, &errb); code != 0 || !strings.Contains(out.String(), "NO_SA") {
		t.Errorf("with OBOL_TOKEN_SOCKET: %d\nstdout: %s\nstderr: %s", code, out.String(), errb.String())
	}
}
