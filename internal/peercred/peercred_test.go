package peercred

import (
	"net"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

func TestOfAndInGroup(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := net.Dial("unix", path)
		if err == nil {
			defer c.Close()
			buf := make([]byte, 1)
			_, _ = c.Read(buf)
		}
	}()
	c, err := ln.AcceptUnix()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	cred, err := Of(c)
	if err != nil {
		t.Fatal(err)
	}
	if int(cred.Pid) != os.Getpid() || int(cred.Uid) != os.Getuid() || int(cred.Gid) != os.Getgid() {
		t.Fatalf("cred = %+v", cred)
	}
	if !InGroup(cred, cred.Gid) {
		t.Error("primary group not recognised")
	}
	groups, _ := os.Getgroups()
	for _, g := range groups {
		if !InGroup(cred, uint32(g)) {
			t.Errorf("supplementary group %d not recognised", g)
		}
	}
	if InGroup(cred, 54321) || InGroup(nil, 0) {
		t.Error("a group the peer is not in was accepted")
	}
	if InGroup(&unix.Ucred{Pid: 1 << 30, Gid: 1}, 2) {
		t.Error("a vanished process was accepted")
	}
}
