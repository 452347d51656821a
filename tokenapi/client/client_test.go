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

// TestEventsCloseWithUnreadEvents: Close returns even when nobody reads C
// and the reader holds an event it cannot deliver.
func TestEventsCloseWithUnreadEvents(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "fake.sock")
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: sock, Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.AcceptUnix()
		if err != nil {
			return
		}
		defer c.Close()
		ev, _ := wire.NewBuilder(wire.TypeEvent, 0).U64(wire.AttrSubscription, 1).U8(wire.AttrEventKind, uint8(wire.EventDown)).Bytes()
		for range eventBuffer + 10 {
			if _, err := c.Write(ev); err != nil {
				return
			}
		}
		time.Sleep(5 * time.Second)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	e, err := DialEvents(ctx, sock)
	if err != nil {
		t.Fatal(err)
	}
	for len(e.c) < eventBuffer {
		time.Sleep(5 * time.Millisecond)
	}
	done := make(chan struct{})
	go func() { e.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(2 * time.Second):
		t.Fatal("Close hangs while events are unread")
	}
}
