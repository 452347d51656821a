// Package kernelesp boots a Debian 12 guest under qemu whose kernel (6.1)
// has ESP, so charon's kernel-netlink backend installs real XFRM SAs, and
// runs obold there. The host kernel of the project's machines has no ESP
// (e2e/lab runs charon with kernel-libipsec instead); this package is how
// the kernel datapath gets tested at all.
//
// The guest image (kernel, initramfs, ext4 root with strongSwan) is built
// once from Debian packages and cached; each run adds its own files (obold,
// obolctl, the scenario script) as a second cpio archive appended to the
// cached initramfs, so code changes never rebuild the image.
package kernelesp

import (
	"context"
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// DefaultCacheDir holds built images, one directory per hash of the inputs.
const DefaultCacheDir = "/var/cache/obol-kernelesp"

// DefaultMirror is where debootstrap fetches the guest's packages.
const DefaultMirror = "http://deb.debian.org/debian"

// recipe changes the cache key: bump it whenever the build steps in this
// file change in a way the other inputs do not show.
const recipe = 1

// suite is the guest's Debian release; its kernel is 6.1.
const suite = "bookworm"

// HostPackages are the Debian packages the build and the runs need on the
// host. cpio and busybox are not among them: the initramfs is written in Go
// and busybox is unpacked from its .deb.
func HostPackages() []string { return []string{"qemu-system-x86", "debootstrap", "e2fsprogs"} }

// guestPackages go into the guest root on top of debootstrap's minbase.
// libstrongswan carries kernel-netlink; libstrongswan-standard-plugins
// brings openssl (x25519) and gcm for IKE. libcharon-extra-plugins is left
// out on purpose: without it charon cannot load kernel-libipsec, so ESP can
// only be the kernel's.
func guestPackages() []string {
	return []string{"charon-systemd", "strongswan-swanctl", "libstrongswan-standard-plugins",
		"iproute2", "iputils-ping", "tcpdump", "kmod"}
}

// guestModuleTrees are the parts of the kernel's module tree copied into
// the guest root (relative to /lib/modules/RELEASE/kernel): XFRM and ESP,
// the crypto they use, veth, and what the initramfs needs for the disk.
// The full tree is ~390 MiB; this is ~15 MiB.
func guestModuleTrees() []string {
	return []string{"net/xfrm", "net/ipv4", "net/ipv6", "crypto", "lib", "arch/x86/crypto",
		"drivers/virtio", "drivers/block/virtio_blk.ko", "drivers/net/veth.ko",
		"fs/ext4", "fs/jbd2", "fs/mbcache.ko"}
}

// initramfsModules are loaded, with their dependencies from modules.dep, by
// the initramfs so it can mount the root disk. ext4 finds crc32c through
// the crypto API (no modprobe in the initramfs), so it is listed itself.
func initramfsModules() []string {
	return []string{"virtio_pci", "virtio_blk", "crc32c_generic", "ext4"}
}

//go:embed initramfs-init.sh.tmpl
var initramfsInitTmpl string

// ImageOptions tune EnsureImage. The zero value is usable.
type ImageOptions struct {
	CacheDir string // DefaultCacheDir if empty
	Mirror   string // DefaultMirror if empty
	// Logf reports progress (t.Logf in tests); nil is silent.
	Logf func(format string, args ...any)
}

// Image is a built guest, ready to boot.
type Image struct {
	Dir       string // the cache entry
	Kernel    string // vmlinuz
	Initramfs string // base initramfs (newc cpio, uncompressed)
	Rootfs    string // ext4 root disk (raw; boot it with -snapshot)
	Release   string // kernel release, e.g. 6.1.0-56-amd64
	// Built tells whether this call built the image (false: cache hit) and
	// how long the build took.
	Built     bool
	BuildTook time.Duration
	// DiskBytes is what the entry takes on disk (the root image is sparse).
	DiskBytes int64
}

// inputs are everything the image is made from; their hash names the cache entry.
type inputs struct {
	Recipe           int      `json:"recipe"`
	Suite            string   `json:"suite"`
	Mirror           string   `json:"mirror"`
	KernelPackage    string   `json:"kernel_package"`
	KernelVersion    string   `json:"kernel_version"`
	BusyboxVersion   string   `json:"busybox_version"`
	Packages         []string `json:"packages"`
	ModuleTrees      []string `json:"module_trees"`
	InitramfsModules []string `json:"initramfs_modules"`
	InitTemplate     string   `json:"init_template"`
	Marker           string   `json:"marker"`
}

func (in inputs) hash() string {
	b, _ := json.Marshal(in)
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:8])
}

// manifest is written last into a finished entry; its presence marks the entry complete.
type manifest struct {
	Inputs    inputs    `json:"inputs"`
	Release   string    `json:"release"`
	Built     time.Time `json:"built"`
	BuildTook string    `json:"build_took"`
}

const (
	manifestName = "manifest.json"
	kernelName   = "vmlinuz"
	initrdName   = "initramfs.cpio"
	rootfsName   = "rootfs.ext4"
	lastUsedName = "last-used"
)

// EnsureImage returns the cached guest image for the current Debian
// packages, building it first if needed. It needs root (debootstrap,
// chroot) and installs missing HostPackages with apt-get. Two processes
// may call it at once: one builds under a lock, in a temporary directory
// renamed into place, and the other waits and reuses it.
func EnsureImage(ctx context.Context, opts ImageOptions) (Image, error) {
	if opts.CacheDir == "" {
		opts.CacheDir = DefaultCacheDir
	}
	if opts.Mirror == "" {
		opts.Mirror = DefaultMirror
	}
	logf := opts.Logf
	if logf == nil {
		logf = func(string, ...any) {}
	}
	if os.Geteuid() != 0 {
		return Image{}, errors.New("building the kernel-ESP guest image needs root (debootstrap, chroot, apt-get); run as root")
	}
	if err := EnsureHostPackages(ctx, logf); err != nil {
		return Image{}, err
	}
	in, err := resolveInputs(ctx, opts.Mirror, logf)
	if err != nil {
		return Image{}, err
	}
	if err := os.MkdirAll(opts.CacheDir, 0o755); err != nil {
		return Image{}, fmt.Errorf("create the image cache %s: %w; make it writable or set another cache directory", opts.CacheDir, err)
	}
	key := in.hash()
	dir := filepath.Join(opts.CacheDir, key)
	if img, ok := openImage(dir); ok {
		return img, nil
	}

	unlock, err := lockFile(ctx, filepath.Join(opts.CacheDir, key+".lock"))
	if err != nil {
		return Image{}, err
	}
	defer unlock()
	if img, ok := openImage(dir); ok { // built by another process while we waited
		return img, nil
	}
	// Holding the lock, any temporary directory for this key is a leftover
	// of a killed build.
	old, _ := filepath.Glob(filepath.Join(opts.CacheDir, ".tmp-"+key+"-*"))
	for _, o := range old {
		if err := removeTree(o); err != nil {
			return Image{}, err
		}
	}
	// An entry without a readable manifest is not ours to trust: rebuild it.
	if err := removeTree(dir); err != nil {
		return Image{}, err
	}

	t0 := time.Now()
	logf("kernelesp: building guest image %s (kernel %s %s, debootstrap %s from %s); cached in %s afterwards",
		key, in.KernelPackage, in.KernelVersion, suite, in.Mirror, dir)
	tmp, err := os.MkdirTemp(opts.CacheDir, ".tmp-"+key+"-")
	if err != nil {
		return Image{}, fmt.Errorf("create a build directory in %s: %w", opts.CacheDir, err)
	}
	renamed := false
	defer func() {
		if !renamed {
			_ = removeTree(tmp)
		}
	}()
	release, err := build(ctx, tmp, in, logf)
	if err != nil {
		return Image{}, fmt.Errorf("build the guest image: %w", err)
	}
	took := time.Since(t0)
	m := manifest{Inputs: in, Release: release, Built: time.Now().UTC(), BuildTook: took.Round(time.Millisecond).String()}
	mb, _ := json.MarshalIndent(m, "", "  ")
	if err := os.WriteFile(filepath.Join(tmp, manifestName), append(mb, '\n'), 0o644); err != nil {
		return Image{}, fmt.Errorf("write the image manifest: %w", err)
	}
	if err := os.Chmod(tmp, 0o755); err != nil {
		return Image{}, err
	}
	if err := os.Rename(tmp, dir); err != nil {
		return Image{}, fmt.Errorf("move the built image into the cache (%s): %w", dir, err)
	}
	renamed = true
	pruneCache(opts.CacheDir, key, logf)
	img, ok := openImage(dir)
	if !ok {
		return Image{}, fmt.Errorf("the image just built in %s is incomplete; remove the directory and run again", dir)
	}
	img.Built, img.BuildTook = true, took
	logf("kernelesp: built the guest image in %v (%.0f MiB on disk)", took.Round(100*time.Millisecond), float64(img.DiskBytes)/(1<<20))
	return img, nil
}

// openImage returns the complete entry in dir, and marks it used.
func openImage(dir string) (Image, bool) {
	b, err := os.ReadFile(filepath.Join(dir, manifestName))
	if err != nil {
		return Image{}, false
	}
	var m manifest
	if json.Unmarshal(b, &m) != nil || m.Release == "" {
		return Image{}, false
	}
	img := Image{
		Dir:       dir,
		Kernel:    filepath.Join(dir, kernelName),
		Initramfs: filepath.Join(dir, initrdName),
		Rootfs:    filepath.Join(dir, rootfsName),
		Release:   m.Release,
	}
	for _, f := range []string{img.Kernel, img.Initramfs, img.Rootfs} {
		st, err := os.Stat(f)
		if err != nil {
			return Image{}, false
		}
		if sys, ok := st.Sys().(*syscall.Stat_t); ok {
			img.DiskBytes += sys.Blocks * 512
		}
	}
	_ = os.WriteFile(filepath.Join(dir, lastUsedName), []byte(time.Now().UTC().Format(time.RFC3339)+"\n"), 0o644)
	return img, true
}

// pruneCache removes other images not used for a week: each is ~150 MiB,
// and a new kernel or strongSwan update in Debian makes a new one.
func pruneCache(cacheDir, keep string, logf func(string, ...any)) {
	entries, err := os.ReadDir(cacheDir)
	if err != nil {
		return
	}
	for _, e := range entries {
		if !e.IsDir() || e.Name() == keep || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		st, err := os.Stat(filepath.Join(cacheDir, e.Name(), lastUsedName))
		if err != nil || time.Since(st.ModTime()) < 7*24*time.Hour {
			continue
		}
		logf("kernelesp: removing the unused cached image %s", e.Name())
		_ = removeTree(filepath.Join(cacheDir, e.Name()))
		_ = os.Remove(filepath.Join(cacheDir, e.Name()+".lock"))
	}
}

// EnsureHostPackages installs the missing HostPackages with apt-get.
func EnsureHostPackages(ctx context.Context, logf func(string, ...any)) error {
	var missing []string
	for _, p := range HostPackages() {
		out, err := exec.CommandContext(ctx, "dpkg-query", "-W", "-f=${Status}", p).Output()
		if err != nil || !strings.Contains(string(out), "install ok installed") {
			missing = append(missing, p)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	logf("kernelesp: installing host packages %v", missing)
	if _, err := run(ctx, "", "apt-get", "update", "-qq"); err != nil {
		return fmt.Errorf("apt-get update (to install %v): %w; check the Debian mirror in /etc/apt/sources.list", missing, err)
	}
	args := append([]string{"install", "-y", "-qq", "--no-install-recommends"}, missing...)
	if _, err := run(ctx, "", "apt-get", args...); err != nil {
		return fmt.Errorf("install %v: %w; install them by hand (apt-get install %s)", missing, err, strings.Join(missing, " "))
	}
	return nil
}

// resolveInputs asks apt which kernel bookworm's linux-image-amd64 points
// at now, and the package versions that go into the image.
func resolveInputs(ctx context.Context, mirror string, logf func(string, ...any)) (inputs, error) {
	in := inputs{
		Recipe:           recipe,
		Suite:            suite,
		Mirror:           mirror,
		Packages:         guestPackages(),
		ModuleTrees:      guestModuleTrees(),
		InitramfsModules: initramfsModules(),
		InitTemplate:     initramfsInitTmpl,
		Marker:           Marker,
	}
	var err error
	for attempt := 0; attempt < 2; attempt++ {
		if attempt == 1 {
			// A fresh machine may have no package lists yet.
			logf("kernelesp: apt has no answer (%v); running apt-get update", err)
			if _, uerr := run(ctx, "", "apt-get", "update", "-qq"); uerr != nil {
				return in, fmt.Errorf("apt-get update: %w", uerr)
			}
		}
		if in.KernelPackage, in.KernelVersion, in.BusyboxVersion, err = aptVersions(ctx); err == nil {
			return in, nil
		}
	}
	return in, fmt.Errorf("find the guest kernel and busybox in apt: %w; the host's apt sources must include Debian bookworm main", err)
}

// aptVersions reads, in one apt-cache call (each takes seconds), which
// kernel package linux-image-amd64 pins and busybox-static's version.
func aptVersions(ctx context.Context) (kernelPkg, kernelVersion, busybox string, err error) {
	out, err := run(ctx, "", "apt-cache", "show", "--no-all-versions", "linux-image-amd64", "busybox-static")
	if err != nil {
		return "", "", "", err
	}
	for _, stanza := range strings.Split(string(out), "\n\n") {
		fields := map[string]string{}
		for _, line := range strings.Split(stanza, "\n") {
			if k, v, ok := strings.Cut(line, ": "); ok {
				fields[k] = strings.TrimSpace(v)
			}
		}
		switch fields["Package"] {
		case "busybox-static":
			busybox = fields["Version"]
		case "linux-image-amd64":
			// "Depends: linux-image-6.1.0-56-amd64 (= 6.1.192-2)"
			for _, dep := range strings.Split(fields["Depends"], ",") {
				name, ver, ok := strings.Cut(strings.TrimSpace(dep), " (= ")
				if ok && strings.HasPrefix(name, "linux-image-6.1.") {
					kernelPkg, kernelVersion = name, strings.TrimSuffix(ver, ")")
				}
			}
		}
	}
	if kernelPkg == "" || busybox == "" {
		return "", "", "", fmt.Errorf("apt-cache show names no linux-image-6.1.* kernel for linux-image-amd64 or no busybox-static:\n%s", tail(string(out), 20))
	}
	return kernelPkg, kernelVersion, busybox, nil
}
