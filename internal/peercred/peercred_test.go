package peercred

import (
	"net"
	"os"
	"path/filepath"
	"slices"
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

func TestParseStatus(t *testing.T) {
	tests := []struct {
		name    string
		status  string
		wantCap bool
		gids    []uint32
		wantErr bool
	}{
		{"root caps", "Name:\tx\nGid:\t0\t0\t0\t0\nGroups:\t0 4 \nCapEff:\t000001ffffffffff\n", true, []uint32{0, 4}, false},
		{"nobody", "Gid:\t65534\t65534\t65534\t65534\nGroups:\t\nCapEff:\t0000000000000000\n", false, []uint32{65534}, false},
		{"net admin only", "Gid:\t10\t11\t10\t10\nGroups:\t20\nCapEff:\t0000000000001000\n", true, []uint32{10, 11, 20}, false},
		{"no CapEff", "Gid:\t0\t0\t0\t0\n", false, nil, true},
		{"bad CapEff", "CapEff:\tzz\n", false, nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := parseStatus(1, tt.status)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, want error %v", err, tt.wantErr)
			}
			if err != nil {
				return
			}
			if got := p.HasCap(unix.CAP_NET_ADMIN); got != tt.wantCap {
				t.Errorf("CAP_NET_ADMIN = %v, want %v", got, tt.wantCap)
			}
			if !slices.Equal(p.GIDs, tt.gids) {
				t.Errorf("GIDs = %v, want %v", p.GIDs, tt.gids)
			}
		})
	}
}

func FuzzParseStatus(f *testing.F) {
	f.Add("Gid:\t0\t0\t0\t0\nGroups:\t0 4\nCapEff:\t000001ffffffffff\n")
	f.Fuzz(func(t *testing.T, s string) {
		parseStatus(1, s)
	})
}

// TestProcessOf reads this test process through a real unix socket: the
// pid and capabilities must be ours.
func TestProcessOf(t *testing.T) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET, 0)
	if err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fds[0]), "a")
	defer f.Close()
	defer unix.Close(fds[1])
	fc, err := net.FileConn(f)
	if err != nil {
		t.Fatal(err)
	}
	defer fc.Close()
	p, err := ProcessOf(fc.(*net.UnixConn))
	if err != nil {
		t.Fatal(err)
	}
	if p.Pid != os.Getpid() {
		t.Errorf("pid %d, want %d", p.Pid, os.Getpid())
	}
	want, err := parseStatus(os.Getpid(), readFile(t, "/proc/self/status"))
	if err != nil {
		t.Fatal(err)
	}
	if p.CapEff != want.CapEff || !slices.Equal(p.GIDs, want.GIDs) {
		t.Errorf("got %+v, want %+v", p, want)
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
