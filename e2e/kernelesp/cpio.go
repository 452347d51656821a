package kernelesp

import (
	"bufio"
	"fmt"
	"io"
	"io/fs"
	"os"
)

// cpioWriter writes the "newc" cpio format the kernel unpacks as an
// initramfs. It is written here rather than with cpio(1) because the
// archives are tiny and need exact control (device nodes, modes, no host
// paths); the kernel accepts several archives concatenated, which is how a
// run adds its own files to the cached initramfs.
type cpioWriter struct {
	w   *bufio.Writer
	ino uint32
	err error
}

func newCPIOWriter(w io.Writer) *cpioWriter { return &cpioWriter{w: bufio.NewWriter(w), ino: 1} }

// entry writes one header, name and body. mode includes the file type bits.
func (c *cpioWriter) entry(name string, mode uint32, rdevMajor, rdevMinor uint32, body []byte) {
	if c.err != nil {
		return
	}
	c.ino++
	nlink := uint32(1)
	if mode&cpioTypeMask == cpioDir {
		nlink = 2
	}
	hdr := fmt.Sprintf("070701%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x",
		c.ino, mode, 0, 0, nlink, 0, len(body), 0, 0, rdevMajor, rdevMinor, len(name)+1, 0)
	c.write([]byte(hdr))
	c.write([]byte(name))
	c.write([]byte{0})
	c.pad(len(hdr) + len(name) + 1)
	c.write(body)
	c.pad(len(body))
}

func (c *cpioWriter) write(b []byte) {
	if c.err == nil {
		_, c.err = c.w.Write(b)
	}
}

func (c *cpioWriter) pad(n int) {
	if r := n % 4; r != 0 {
		c.write(make([]byte, 4-r))
	}
}

// Type bits of a cpio mode (as in stat(2)).
const (
	cpioTypeMask = 0o170000
	cpioDir      = 0o040000
	cpioFile     = 0o100000
	cpioLink     = 0o120000
	cpioChar     = 0o020000
)

func (c *cpioWriter) Dir(name string) { c.entry(name, cpioDir|0o755, 0, 0, nil) }
func (c *cpioWriter) File(name string, perm fs.FileMode, b []byte) {
	c.entry(name, cpioFile|uint32(perm.Perm()), 0, 0, b)
}
func (c *cpioWriter) Symlink(name, target string) {
	c.entry(name, cpioLink|0o777, 0, 0, []byte(target))
}
func (c *cpioWriter) CharDev(name string, major, minor uint32) {
	c.entry(name, cpioChar|0o600, major, minor, nil)
}

// CopyFile adds the host file src as name, keeping its permission bits.
func (c *cpioWriter) CopyFile(name, src string) {
	if c.err != nil {
		return
	}
	b, err := os.ReadFile(src)
	if err != nil {
		c.err = err
		return
	}
	st, err := os.Stat(src)
	if err != nil {
		c.err = err
		return
	}
	c.File(name, st.Mode(), b)
}

// Close writes the trailer and flushes. It does not close the underlying writer.
func (c *cpioWriter) Close() error {
	c.ino = 0
	c.entry("TRAILER!!!", 0, 0, 0, nil)
	if c.err != nil {
		return c.err
	}
	return c.w.Flush()
}
