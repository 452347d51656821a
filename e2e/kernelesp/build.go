package kernelesp

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"text/template"
	"time"
)

// build makes the image's files in dir and returns the kernel release.
func build(ctx context.Context, dir string, in inputs, logf func(string, ...any)) (string, error) {
	root := filepath.Join(dir, "root")
	debs := filepath.Join(dir, "debs")
	kroot := filepath.Join(dir, "kernel")
	bbroot := filepath.Join(dir, "busybox")
	defer func() {
		for _, d := range []string{root, debs, kroot, bbroot} {
			_ = removeTree(d)
		}
	}()

	// debootstrap takes most of the time; fetch the kernel beside it.
	t0 := time.Now()
	bctx, cancel := context.WithCancel(ctx)
	defer cancel()
	bootstrapped := make(chan error, 1)
	go func() {
		args := []string{"--variant=minbase", "--include=" + strings.Join(in.Packages, ","), in.Suite, root, in.Mirror}
		_, err := run(bctx, "", "debootstrap", args...)
		if err != nil {
			err = fmt.Errorf("debootstrap: %w; is %s reachable?", err, in.Mirror)
		}
		bootstrapped <- err
	}()
	kerr := func() error {
		if err := os.MkdirAll(debs, 0o755); err != nil {
			return err
		}
		// The sandbox user _apt cannot write the root-only build directory.
		if _, err := run(ctx, debs, "apt-get", "download", "-o", "APT::Sandbox::User=root",
			in.KernelPackage+"="+in.KernelVersion, "busybox-static="+in.BusyboxVersion); err != nil {
			return fmt.Errorf("apt-get download the kernel and busybox: %w; if the mirror no longer has these versions, run apt-get update", err)
		}
		for _, x := range []struct{ glob, to string }{{"linux-image-*.deb", kroot}, {"busybox-static_*.deb", bbroot}} {
			m, _ := filepath.Glob(filepath.Join(debs, x.glob))
			if len(m) != 1 {
				return fmt.Errorf("apt-get download left %d files matching %s in %s", len(m), x.glob, debs)
			}
			if _, err := run(ctx, "", "dpkg", "-x", m[0], x.to); err != nil {
				return fmt.Errorf("unpack %s: %w", filepath.Base(m[0]), err)
			}
		}
		return nil
	}()
	if kerr != nil {
		cancel() // no use waiting for debootstrap
	}
	if err := <-bootstrapped; err != nil && kerr == nil {
		return "", err
	}
	if kerr != nil {
		return "", kerr
	}
	logf("kernelesp: debootstrap and kernel download took %v", time.Since(t0).Round(100*time.Millisecond))

	rels, _ := filepath.Glob(filepath.Join(kroot, "lib/modules/*"))
	if len(rels) != 1 {
		return "", fmt.Errorf("the kernel package has %d module trees, want 1: %v", len(rels), rels)
	}
	release := filepath.Base(rels[0])
	kmods := rels[0]
	gmods := filepath.Join(root, "lib/modules", release)
	for _, tree := range in.ModuleTrees {
		if err := copyTree(filepath.Join(kmods, "kernel", tree), filepath.Join(gmods, "kernel", tree)); err != nil {
			return "", fmt.Errorf("copy kernel modules %s: %w", tree, err)
		}
	}
	for _, f := range []string{"modules.order", "modules.builtin", "modules.builtin.modinfo"} {
		if err := copyTree(filepath.Join(kmods, f), filepath.Join(gmods, f)); err != nil {
			return "", err
		}
	}
	// depmod inside the guest root writes modules.dep (read below for the
	// initramfs) and the aliases the guest's modprobe needs at run time.
	if _, err := run(ctx, "", "chroot", root, "depmod", "-a", release); err != nil {
		return "", fmt.Errorf("depmod in the guest root: %w", err)
	}
	ix, err := readModuleIndex(gmods)
	if err != nil {
		return "", err
	}
	order, err := ix.loadOrder(in.InitramfsModules)
	if err != nil {
		return "", err
	}

	if err := copyTree(filepath.Join(kroot, "boot", "vmlinuz-"+release), filepath.Join(dir, kernelName)); err != nil {
		return "", fmt.Errorf("copy the kernel: %w", err)
	}
	if err := writeInitramfs(filepath.Join(dir, initrdName), filepath.Join(bbroot, "bin/busybox"), gmods, ix, order, in); err != nil {
		return "", fmt.Errorf("write the initramfs: %w", err)
	}

	// Nothing in the guest needs apt's caches, documentation or locales.
	for _, p := range []string{"var/cache/apt", "var/lib/apt/lists", "usr/share/doc", "usr/share/man",
		"usr/share/info", "usr/share/locale", "var/log"} {
		if err := removeTree(filepath.Join(root, p)); err != nil {
			return "", err
		}
	}
	for _, p := range []string{"var/cache/apt", "var/lib/apt/lists", "var/log"} {
		if err := os.MkdirAll(filepath.Join(root, p), 0o755); err != nil {
			return "", err
		}
	}
	if err := mkext4(ctx, root, filepath.Join(dir, rootfsName)); err != nil {
		return "", err
	}
	return release, nil
}

// writeInitramfs writes the base initramfs: busybox, the modules in load
// order, /dev/console (the kernel opens it before running /init) and /init.
func writeInitramfs(path, busybox, gmods string, ix *moduleIndex, order []string, in inputs) error {
	tmpl, err := template.New("init").Parse(in.InitTemplate)
	if err != nil {
		return fmt.Errorf("parse initramfs-init.sh.tmpl: %w", err)
	}
	var init bytes.Buffer
	if err := tmpl.Execute(&init, struct {
		Modules []string
		Marker  string
	}{order, in.Marker}); err != nil {
		return err
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	c := newCPIOWriter(f)
	for _, d := range []string{"bin", "dev", "proc", "sys", "newroot", "lib", "lib/modules"} {
		c.Dir(d)
	}
	c.CharDev("dev/console", 5, 1)
	c.CopyFile("bin/busybox", busybox)
	for _, m := range order {
		c.CopyFile("lib/modules/"+m+".ko", filepath.Join(gmods, ix.path[m]))
	}
	c.File("init", 0o755, init.Bytes())
	if err := c.Close(); err != nil {
		return err
	}
	return f.Close()
}

// mkext4 packs root into an ext4 image sized to its contents plus room
// for what the guest writes.
func mkext4(ctx context.Context, root, img string) error {
	var bytes, files int64
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		files++
		if info, err := d.Info(); err == nil && info.Mode().IsRegular() {
			bytes += (info.Size() + 4095) &^ 4095
		} else {
			bytes += 4096
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("size the guest root: %w", err)
	}
	sizeMiB := bytes*12/10/(1<<20) + 96
	inodes := files*2 + 8192
	if _, err := run(ctx, "", "mke2fs", "-q", "-F", "-t", "ext4", "-L", "obolroot", "-m", "0",
		"-N", fmt.Sprint(inodes), "-E", "root_owner=0:0", "-d", root, img, fmt.Sprintf("%dM", sizeMiB)); err != nil {
		return fmt.Errorf("mke2fs the guest root: %w", err)
	}
	return nil
}

// copyTree copies a file or a directory tree, keeping modes and symlinks.
func copyTree(src, dst string) error {
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		to := filepath.Join(dst, rel)
		info, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case d.IsDir():
			return os.MkdirAll(to, info.Mode().Perm()|0o700)
		case info.Mode()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			return os.Symlink(target, to)
		case info.Mode().IsRegular():
			if err := os.MkdirAll(filepath.Dir(to), 0o755); err != nil {
				return err
			}
			return copyFile(p, to, info.Mode().Perm())
		}
		return fmt.Errorf("%s: cannot copy a %v", p, info.Mode().Type())
	})
}

func copyFile(src, dst string, perm fs.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, perm)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
