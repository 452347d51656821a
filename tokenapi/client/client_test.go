package client

import (
	"context"
	"errors"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/obol-ipsec/obol/tokenapi/wire"
)

func TestDialNoServer(t *testing.T) {
	_, err := Dial(context.Background(), filepath.Join(t.TempDir(), "none.sock"))
	if err == nil || !strings.Contains(err.Error(), "is obold running") {
		t.Fatalf("Dial: %v", err)
	}
}

// A server that never answers: the request ends with the context, and a
// late reply to it is skipped by the next request.
func TestContextAndLateReply(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "s.sock")
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: sock, Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	release := make(chan struct{})
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		buf := make([]byte, wire.MaxMessage)
		for i := 0; ; i++ {
			n, err := c.Read(buf)
			if err != nil {
				return
			}
			m, _ := wire.Decode(buf[:n])
			if i == 0 {
				<-release
			}
			b, _ := wire.NewBuilder(wire.TypeOK, m.ID).Bytes()
			c.Write(b)
		}
	}()
	c, err := Dial(context.Background(), sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := c.Release(ctx, 1); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Release on a silent server: %v", err)
	}
	close(release)
	ctx2, cancel2 := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel2()
	if err := c.Release(ctx2, 2); err != nil {
		t.Fatalf("Release after a late reply: %v", err)
	}
}
