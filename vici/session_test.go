package vici

import (
	"context"
	"errors"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// TestDialWaitsForFullBacklog: a unix socket whose listen backlog is full
// (charon's VICI socket has a backlog of 3) refuses a non-blocking connect
// with EAGAIN; dialWaiting waits until the listener accepts, or ctx ends.
func TestDialWaitsForFullBacklog(t *testing.T) {
	path := filepath.Join(t.TempDir(), "full.sock")
	lfd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(lfd)
	if err := syscall.Bind(lfd, &syscall.SockaddrUnix{Name: path}); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Listen(lfd, 0); err != nil {
		t.Fatal(err)
	}
	// Fill the backlog with connections nobody accepts yet.
	var fill []int
	defer func() {
		for _, fd := range fill {
			syscall.Close(fd)
		}
	}()
	for full := false; !full; {
		fd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_NONBLOCK|syscall.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		fill = append(fill, fd)
		err = syscall.Connect(fd, &syscall.SockaddrUnix{Name: path})
		switch {
		case errors.Is(err, syscall.EAGAIN):
			full = true
		case err != nil:
			t.Fatal(err)
		case len(fill) > 16:
			t.Fatal("the backlog never filled")
		}
	}

	short, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := dialWaiting(short, "unix", path); !errors.Is(err, syscall.EAGAIN) {
		t.Fatalf("dial to a full backlog until the deadline: %v, want EAGAIN", err)
	}

	// The listener catches up 30 ms later: the dial succeeds.
	queued := len(fill) - 1 // the last connect was refused
	go func() {
		time.Sleep(30 * time.Millisecond)
		for range queued + 1 { // and the dial's own
			fd, _, err := syscall.Accept(lfd)
			if err != nil {
				return
			}
			syscall.Close(fd)
		}
	}()
	ctx, cancel2 := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel2()
	c, err := dialWaiting(ctx, "unix", path)
	if err != nil {
		t.Fatalf("dial once the listener accepts: %v", err)
	}
	c.Close()
}
