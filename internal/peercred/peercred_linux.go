// Package peercred says who is at the other end of a unix socket, for the
// sockets obold serves (control, token API): SO_PEERCRED, and group
// membership including supplementary groups.
package peercred

import (
	"fmt"
	"net"
	"os"
	"slices"
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

// soPeerPidfd is SO_PEERPIDFD (Linux 6.5): a pidfd of the peer process.
const soPeerPidfd = 77

// Process is what the kernel says of the peer process now.
type Process struct {
	Pid    int
	CapEff uint64   // effective capabilities
	GIDs   []uint32 // real, effective and supplementary groups
}

// HasCap tells whether capability c (e.g. unix.CAP_NET_ADMIN) is effective.
func (p Process) HasCap(c int) bool { return c >= 0 && c < 64 && p.CapEff&(1<<uint(c)) != 0 }

// ProcessOf reads the peer's capabilities and groups through its pidfd
// (SO_PEERPIDFD): the pid comes from the pidfd, and the process is checked
// still alive after /proc was read, so a recycled pid cannot lend another
// process's privileges.
func ProcessOf(c *net.UnixConn) (Process, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return Process{}, err
	}
	pidfd := -1
	var gerr error
	if err := rc.Control(func(fd uintptr) {
		pidfd, gerr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, soPeerPidfd)
	}); err != nil {
		return Process{}, err
	}
	if gerr != nil {
		return Process{}, fmt.Errorf("SO_PEERPIDFD: %w (needs Linux 6.5 or later)", gerr)
	}
	defer unix.Close(pidfd)
	info, err := os.ReadFile("/proc/self/fdinfo/" + strconv.Itoa(pidfd))
	if err != nil {
		return Process{}, fmt.Errorf("read the peer's pidfd: %w", err)
	}
	pid := -1
	for _, line := range strings.Split(string(info), "\n") {
		if v, ok := strings.CutPrefix(line, "Pid:"); ok {
			pid, _ = strconv.Atoi(strings.TrimSpace(v))
		}
	}
	if pid <= 0 {
		return Process{}, fmt.Errorf("the peer process has exited or lives in another pid namespace")
	}
	status, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return Process{}, fmt.Errorf("read the peer's status: %w", err)
	}
	if err := unix.PidfdSendSignal(pidfd, 0, nil, 0); err != nil {
		return Process{}, fmt.Errorf("the peer process exited while its privileges were read: %w", err)
	}
	return parseStatus(pid, string(status))
}

func parseStatus(pid int, status string) (Process, error) {
	p := Process{Pid: pid}
	seen := false
	for _, line := range strings.Split(status, "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		v = strings.TrimSpace(v)
		switch k {
		case "CapEff":
			n, err := strconv.ParseUint(v, 16, 64)
			if err != nil {
				return Process{}, fmt.Errorf("/proc/%d/status CapEff %q: %w", pid, v, err)
			}
			p.CapEff, seen = n, true
		case "Gid", "Groups":
			for i, f := range strings.Fields(v) {
				if k == "Gid" && i > 1 {
					break // real and effective only
				}
				if g, err := strconv.ParseUint(f, 10, 32); err == nil && !slices.Contains(p.GIDs, uint32(g)) {
					p.GIDs = append(p.GIDs, uint32(g))
				}
			}
		}
	}
	if !seen {
		return Process{}, fmt.Errorf("/proc/%d/status has no CapEff line", pid)
	}
	return p, nil
}
