//go:build linux

package xfrm

import (
	"crypto/rand"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// labNS is a throwaway network namespace with a veth pair: v0 10.98.0.1/24
// and v1 10.98.0.2/24, and a route to 10.99.0.0/16 via 10.98.0.2 (a trap
// fires only when the packet has a route; this kernel has no dummy devices).
type labNS struct {
	t    testing.TB
	name string
}

// ip runs `ip -n NS args...`.
func (n *labNS) ip(args ...string) string {
	n.t.Helper()
	out, err := exec.Command("ip", append([]string{"-n", n.name}, args...)...).CombinedOutput()
	if err != nil {
		n.t.Fatalf("ip -n %s %s: %v\n%s", n.name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// inNetns creates a namespace (named like the lab's, obl + 5 characters, so
// that `make check-clean` catches a leftover), runs body on this goroutine's
// OS thread switched into it, switches back and deletes the namespace, also
// when body fails.
func inNetns(t testing.TB, body func(ns *labNS)) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("needs root: network namespaces and XFRM (make test runs as root)")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Fatal("needs iproute2: make deps installs it")
	}
	var r [5]byte
	rand.Read(r[:])
	const alnum = "abcdefghijklmnopqrstuvwxyz0123456789"
	for i := range r {
		r[i] = alnum[int(r[i])%len(alnum)]
	}
	ns := &labNS{t: t, name: fmt.Sprintf("obl%s-xfrm", r[:])}
	if out, err := exec.Command("ip", "netns", "add", ns.name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v\n%s", ns.name, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", ns.name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v\n%s", ns.name, err, out)
		}
	})
	ns.ip("link", "set", "lo", "up")
	ns.ip("link", "add", "v0", "type", "veth", "peer", "name", "v1")
	ns.ip("addr", "add", "10.98.0.1/24", "dev", "v0")
	ns.ip("addr", "add", "10.98.0.2/24", "dev", "v1")
	ns.ip("link", "set", "v0", "up")
	ns.ip("link", "set", "v1", "up")
	ns.ip("route", "add", "10.99.0.0/16", "via", "10.98.0.2", "dev", "v0")

	runtime.LockOSThread()
	orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatal(err)
	}
	target, err := unix.Open("/run/netns/"+ns.name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		unix.Close(orig)
		runtime.UnlockOSThread()
		t.Fatal(err)
	}
	defer func() {
		// Back to the original namespace; if that fails the thread stays
		// locked and dies with the goroutine.
		if err := unix.Setns(orig, unix.CLONE_NEWNET); err == nil {
			runtime.UnlockOSThread()
		} else {
			t.Errorf("setns back: %v", err)
		}
		unix.Close(orig)
	}()
	err = unix.Setns(target, unix.CLONE_NEWNET)
	unix.Close(target)
	if err != nil {
		t.Fatalf("setns %s: %v", ns.name, err)
	}
	body(ns)
}
