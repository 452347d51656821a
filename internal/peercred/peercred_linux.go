// Package peercred says who is at the other end of a unix socket, for the
// sockets obold serves (control, token API): SO_PEERCRED, and group
// membership including supplementary groups.
package peercred

import (
	"net"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Of returns the peer's credentials (pid, uid, primary gid at connect time).
func Of(c *net.UnixConn) (*unix.Ucred, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	var cred *unix.Ucred
	var cerr error
	if err := rc.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return nil, err
	}
	return cred, cerr
}

// InGroup tells whether the peer has gid as its primary or a supplementary
// group. SO_PEERCRED carries only the primary group, so the supplementary
// ones come from /proc/PID/status.
func InGroup(cred *unix.Ucred, gid uint32) bool {
	if cred == nil {
		return false
	}
	if cred.Gid == gid {
		return true
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(int(cred.Pid)) + "/status")
	if err != nil {
		return false
	}
	want := strconv.FormatUint(uint64(gid), 10)
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "Groups:"); ok {
			for _, f := range strings.Fields(rest) {
				if f == want {
					return true
				}
			}
		}
	}
	return false
}
