package kernelesp

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"syscall"
	"time"
)

// File is one file a run puts into the guest, below /obol.
type File struct {
	Name string // relative to /obol: "init" (required), "bin/obold", ...
	Mode fs.FileMode
	Data []byte // the content, or
	Src  string // a host file to copy
}

// BootOptions describe one run of the guest.
type BootOptions struct {
	// Files go to /obol in the guest; "init" runs as PID 1 there.
	Files []File
	// TmpDir holds the run's initramfs and qemu's snapshot overlay; the
	// caller removes it (t.TempDir()).
	TmpDir    string
	MemoryMiB int           // 512 if zero
	CPUs      int           // 2 if zero
	Timeout   time.Duration // qemu is killed after this; 3 minutes if zero
	// Console, if set, gets a copy of the console as it arrives.
	Console io.Writer
}

// Boot runs the guest until it powers off and returns its console output.
// qemu is killed (by PID) when ctx ends or Timeout passes, and also if this
// process dies (parent-death signal), so no qemu outlives a run.
func Boot(ctx context.Context, img Image, opts BootOptions) ([]byte, error) {
	if opts.TmpDir == "" {
		return nil, errors.New("Boot: set TmpDir to a directory the caller removes")
	}
	if opts.MemoryMiB == 0 {
		opts.MemoryMiB = 512
	}
	if opts.CPUs == 0 {
		opts.CPUs = 2
	}
	if opts.Timeout == 0 {
		opts.Timeout = 3 * time.Minute
	}
	qemu, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		return nil, fmt.Errorf("qemu-system-x86_64 not found: %w; apt-get install qemu-system-x86", err)
	}
	initrd := filepath.Join(opts.TmpDir, "initramfs.cpio")
	if err := writeRunInitramfs(initrd, img.Initramfs, opts.Files); err != nil {
		return nil, fmt.Errorf("write the run's initramfs: %w", err)
	}

	ctx, cancel := context.WithTimeout(ctx, opts.Timeout)
	defer cancel()
	args := []string{
		"-accel", "tcg,thread=multi", "-cpu", "max",
		"-smp", fmt.Sprint(opts.CPUs), "-m", fmt.Sprint(opts.MemoryMiB),
		"-nodefaults", "-no-user-config", "-display", "none", "-nic", "none",
		"-serial", "stdio", "-monitor", "none",
		// panic=-1 reboots on a kernel panic and -no-reboot turns any
		// reboot into qemu exiting: a dead guest never hangs the run.
		"-no-reboot",
		"-kernel", img.Kernel,
		"-initrd", initrd,
		"-append", "console=ttyS0 panic=-1 quiet loglevel=3",
		// -snapshot: the cached root disk is never written.
		"-drive", "file=" + img.Rootfs + ",if=virtio,format=raw",
		"-snapshot",
	}
	cmd := exec.CommandContext(ctx, qemu, args...)
	// qemu puts its snapshot overlay in TMPDIR: keep it in the run's directory.
	cmd.Env = append(os.Environ(), "TMPDIR="+opts.TmpDir)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	cmd.WaitDelay = 5 * time.Second
	var console bytes.Buffer
	if opts.Console != nil {
		cmd.Stdout = io.MultiWriter(&console, opts.Console)
	} else {
		cmd.Stdout = &console
	}
	cmd.Stderr = cmd.Stdout
	err = cmd.Run()
	switch {
	case ctx.Err() != nil:
		return console.Bytes(), fmt.Errorf("the guest did not power off within %v; qemu killed: %w", opts.Timeout, ctx.Err())
	case err != nil:
		return console.Bytes(), fmt.Errorf("qemu failed: %w", err)
	}
	return console.Bytes(), nil
}

// writeRunInitramfs writes the cached base initramfs followed by a second
// cpio archive with the run's files under obol/; the kernel unpacks both.
func writeRunInitramfs(dst, base string, files []File) error {
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	defer out.Close()
	in, err := os.Open(base)
	if err != nil {
		return err
	}
	defer in.Close()
	if _, err := io.Copy(out, in); err != nil {
		return err
	}
	c := newCPIOWriter(out)
	// The kernel creates no missing parent directories: list them first.
	dirs := map[string]bool{"obol": true}
	c.Dir("obol")
	hasInit := false
	for _, f := range files {
		name := path.Clean(f.Name)
		if name == "." || path.IsAbs(name) || name == ".." || len(name) > 2 && name[:3] == "../" {
			return fmt.Errorf("file name %q must be relative below /obol", f.Name)
		}
		hasInit = hasInit || name == "init"
		var parents []string
		for d := path.Dir(name); d != "."; d = path.Dir(d) {
			parents = append([]string{d}, parents...)
		}
		for _, d := range parents {
			if !dirs["obol/"+d] {
				dirs["obol/"+d] = true
				c.Dir("obol/" + d)
			}
		}
		data := f.Data
		if f.Src != "" {
			if data, err = os.ReadFile(f.Src); err != nil {
				return err
			}
		}
		c.File("obol/"+name, f.Mode, data)
	}
	if !hasInit {
		return errors.New("no file named \"init\": the guest needs /obol/init to run")
	}
	if err := c.Close(); err != nil {
		return err
	}
	return out.Close()
}
