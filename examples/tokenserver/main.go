// Command tokenserver is a tiny TCP server that asks obold's token API, for
// every client it accepts, how the connection is protected (pToken) and who
// the authenticated peer is (iToken), prints that, and tells the client
// whether its connection is private.
//
//	tokenserver [--listen :7001] [--token-socket /run/obol/token.sock]
package main

import (
	"context"
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/obol-ipsec/obol/tokenapi/client"
)

func main() {
	listen := flag.String("listen", ":7001", "TCP `address` to listen on")
	sock := flag.String("token-socket", client.DefaultSocket, "obold's token API socket `path`")
	flag.Parse()
	if err := run(*listen, *sock); err != nil {
		log.Fatalf("tokenserver: %v", err)
	}
}

func run(listen, sock string) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", listen)
	if err != nil {
		return fmt.Errorf("%w (is the port free? choose another with --listen)", err)
	}
	log.Printf("tokenserver: listening on %s, asking %s", ln.Addr(), sock)
	defer log.Print("tokenserver: stopped")
	return serve(ctx, ln, sock, log.New(os.Stdout, "", 0))
}

// serve accepts clients on ln until ctx ends, then waits for the clients
// being handled. out serializes the blocks printed by concurrent handlers.
func serve(ctx context.Context, ln net.Listener, sock string, out *log.Logger) error {
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("accept: %w", err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			handle(ctx, sock, c.(*net.TCPConn), out)
		}()
	}
}

// handle reports on one client and greets it.
func handle(ctx context.Context, sock string, c *net.TCPConn, out *log.Logger) {
	defer c.Close()
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var b strings.Builder
	fmt.Fprintf(&b, "client %s\n", c.RemoteAddr())
	pt, err := describe(ctx, sock, c, &b)
	if err != nil {
		fmt.Fprintf(&b, "  error:       %v\n", err)
	}
	out.Print(b.String())

	greeting := "your connection is private (IPsec)"
	switch {
	case err != nil:
		greeting = "I could not tell whether your connection is private"
	case !pt.Privacy:
		greeting = fmt.Sprintf("your connection is NOT private (%s)", whyNot(pt))
	}
	c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(c, "hello %s: %s\n", c.RemoteAddr(), greeting)
}

// describe asks the token API about c and writes the answer to w.
func describe(ctx context.Context, sock string, c *net.TCPConn, w io.Writer) (client.PToken, error) {
	tc, err := client.Dial(ctx, sock)
	if err != nil {
		return client.PToken{}, err
	}
	defer tc.Close() // frees the pToken
	pt, err := tc.PToken(ctx, c)
	if err != nil {
		return client.PToken{}, err
	}
	fmt.Fprintf(w, "  protected:   %t (privacy %t, integrity %t, compression %t)\n", pt.Protected, pt.Privacy, pt.Integrity, pt.Compression)
	fmt.Fprintf(w, "  label:       %s\n  audit:       %s\n", orDash(pt.Label), orDash(pt.Audit))
	if !pt.Protected {
		fmt.Fprintf(w, "  why:         %s\n", whyNot(pt))
	}
	if pt.IToken == 0 {
		fmt.Fprintf(w, "  peer:        - (no authenticated peer)\n")
		return pt, nil
	}
	id, err := tc.IToken(ctx, pt.IToken)
	if err != nil {
		return pt, fmt.Errorf("iToken: %w", err)
	}
	fmt.Fprintf(w, "  peer:        %s\n  auth method: %s\n", orDash(id.RemoteID), id.AuthMethod)
	fmt.Fprintf(w, "  cert DN:     %s\n  CA DN:       %s\n", orDash(id.CertDN), orDash(id.CADN))
	fmt.Fprintf(w, "  pubKeyID:    %s\n  binding:     %s\n", orDash(id.PubKeyID), shortHex(id.ChannelBinding))
	fmt.Fprintf(w, "  iToken:      %016x\n", uint64(id.Handle))
	return pt, nil
}

func whyNot(pt client.PToken) string {
	switch {
	case pt.Protected:
		return "the SA has no confidentiality: AH, ESP-NULL or an untrusted cipher"
	case pt.WhyText != "":
		return pt.Why.String() + ": " + pt.WhyText
	}
	return pt.Why.String()
}

func shortHex(b []byte) string {
	const n = 8
	if len(b) <= n {
		return orDash(hex.EncodeToString(b))
	}
	return fmt.Sprintf("%s...%s (%d bytes)", hex.EncodeToString(b[:n/2]), hex.EncodeToString(b[len(b)-n/2:]), len(b))
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
