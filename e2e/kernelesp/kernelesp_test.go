package kernelesp

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/obol-ipsec/obol/internal/control"
)

// TestKernelESP boots the Debian 12 guest, where charon's kernel-netlink
// installs real kernel XFRM SAs, and checks that obold sees that datapath
// and the SA as the kernel counts it: status says datapath "kernel", sas
// shows the transport-mode ESP CHILD_SA with packets both ways, the kernel
// holds the ESP states and the wire carries ESP, not ICMP.
func TestKernelESP(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("TestKernelESP needs root: it installs qemu and debootstrap if missing, builds the guest image in " +
			DefaultCacheDir + " and runs qemu; run it as root (make test does)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()

	t0 := time.Now()
	img, err := EnsureImage(ctx, ImageOptions{CacheDir: os.Getenv("OBOL_KERNELESP_CACHE"), Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	if !img.Built {
		t.Logf("guest image %s (kernel %s, %.0f MiB) from the cache in %v", img.Dir, img.Release,
			float64(img.DiskBytes)/(1<<20), time.Since(t0).Round(time.Millisecond))
	}

	tmp := t.TempDir()
	bins := buildStatic(ctx, t, tmp, "obold", "obolctl")
	sc := DefaultScenario()
	script, err := sc.Script()
	if err != nil {
		t.Fatal(err)
	}
	t1 := time.Now()
	raw, err := Boot(ctx, img, BootOptions{
		TmpDir: tmp,
		// Beyond the guest's own watchdog (DefaultScenario's GuestTimeout),
		// so a hang still ends with the guest's console and "timeout".
		Timeout: 5 * time.Minute,
		Files: []File{
			{Name: "init", Mode: 0o755, Data: script},
			{Name: "bin/obold", Mode: 0o755, Src: bins["obold"]},
			{Name: "bin/obolctl", Mode: 0o755, Src: bins["obolctl"]},
		},
	})
	if err != nil {
		t.Fatalf("%v\nconsole:\n%s", err, raw)
	}
	con, err := ParseConsole(raw)
	if err != nil {
		t.Fatalf("%v\nconsole:\n%s", err, raw)
	}
	var steps []string
	for _, name := range con.Order {
		if d := con.Sections[name].Took; d >= 100*time.Millisecond {
			steps = append(steps, fmt.Sprintf("%s %.1fs", name, d.Seconds()))
		}
	}
	t.Logf("guest booted, ran the scenario and powered off in %v (steps over 0.1 s: %s)",
		time.Since(t1).Round(time.Millisecond), strings.Join(steps, ", "))
	defer func() {
		if t.Failed() {
			for _, name := range con.Order {
				s := con.Sections[name]
				t.Logf("--- guest %s (rc=%d)\n%s", name, s.RC, s.Output)
			}
		}
	}()
	if len(con.Problems) > 0 || !con.Done {
		t.Fatalf("the guest did not finish its scenario (problems: %q); console:\n%s", con.Problems, raw)
	}
	if con.Failed > 0 {
		for _, name := range con.Order {
			if s := con.Sections[name]; s.RC != 0 {
				t.Errorf("guest step %s failed (rc=%d):\n%s", name, s.RC, s.Output)
			}
		}
		t.FailNow()
	}

	ping := con.Sections["ping"]
	if want := fmt.Sprintf("%d packets transmitted, %d received", sc.Pings, sc.Pings); !strings.Contains(ping.Output, want) {
		t.Errorf("ping %s from %s: want %q in:\n%s", sc.Nodes[1].Addr, sc.Nodes[0].Name, want, ping.Output)
	}
	var spis [2][]uint32
	for i, n := range sc.Nodes {
		checkStatus(t, n, con.Sections["status-"+n.Name].Output)
		checkSAs(t, n, sc, con.Sections["sas-"+n.Name].Output)
		spis[i] = checkKernelStates(t, n, con.Sections["xfrm-state-"+n.Name].Output)
	}
	// Both kernels hold the same pair of SAs, and the ESP on the wire is theirs.
	if !slices.Equal(spis[0], spis[1]) {
		t.Errorf("kernel ESP SPIs differ: %s %#x, %s %#x", sc.Nodes[0].Name, spis[0], sc.Nodes[1].Name, spis[1])
	}
	checkWire(t, con.Sections["wire"].Output, sc, spis[0])
}

// checkStatus: obold is connected to charon 5.9.8 and derived the kernel
// datapath from its plugins (kernel-netlink, no kernel-libipsec).
func checkStatus(t *testing.T, n Node, out string) {
	t.Helper()
	var st control.Status
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Errorf("%s: obolctl status --json is not a status: %v\n%s", n.Name, err, out)
		return
	}
	c := st.Charon
	if !c.Connected || c.LastError != "" || st.Obold.LastError != "" {
		t.Errorf("%s: charon connected=%v, last errors: charon %q, obold %q", n.Name, c.Connected, c.LastError, st.Obold.LastError)
	}
	if c.Datapath != "kernel" {
		t.Errorf("%s: datapath = %q, want \"kernel\" (charon's plugins: %v)", n.Name, c.Datapath, c.Plugins)
	}
	if c.Version != "5.9.8" {
		t.Errorf("%s: charon version = %q, want 5.9.8 (Debian 12)", n.Name, c.Version)
	}
	if !slices.Contains(c.Plugins, "kernel-netlink") || slices.Contains(c.Plugins, "kernel-libipsec") {
		t.Errorf("%s: charon's plugins %v: want kernel-netlink and no kernel-libipsec", n.Name, c.Plugins)
	}
	if c.IKESAs != 1 {
		t.Errorf("%s: status counts %d IKE_SAs, want 1", n.Name, c.IKESAs)
	}
	// obold's event stream saw the kernel SA come up.
	if st.Obold.Events["child-updown"] < 1 || st.Obold.Events["ike-updown"] < 1 {
		t.Errorf("%s: obold counted events %v, want ike-updown and child-updown", n.Name, st.Obold.Events)
	}
}

// checkSAs: the one IKE_SA (swanctl's, so owner "other") and its CHILD_SA
// in transport mode, plain ESP (no UDP encapsulation: nothing forces it
// with kernel ESP), installed, with the ping counted both ways.
func checkSAs(t *testing.T, n Node, sc Scenario, out string) {
	t.Helper()
	var sas []control.SA
	if err := json.Unmarshal([]byte(out), &sas); err != nil {
		t.Errorf("%s: obolctl sas --json is not a list of SAs: %v\n%s", n.Name, err, out)
		return
	}
	if len(sas) != 1 {
		t.Errorf("%s: %d IKE_SAs, want 1:\n%s", n.Name, len(sas), out)
		return
	}
	sa := sas[0]
	if sa.Name != sc.Conn || sa.Owner != "other" || sa.State != "ESTABLISHED" || sa.Version != 2 {
		t.Errorf("%s: IKE_SA name/owner/state/version = %s/%s/%s/%d, want %s/other/ESTABLISHED/2",
			n.Name, sa.Name, sa.Owner, sa.State, sa.Version, sc.Conn)
	}
	// IKE moves to port 4500 with MOBIKE even without NAT; what matters is
	// that charon saw no NAT and faked none (kernel-libipsec fakes one).
	if sa.LocalHost.String() != n.Addr || sa.RemoteHost.String() != n.Peer || sa.NATAny || sa.NATFake {
		t.Errorf("%s: IKE_SA %s -> %s nat_any=%v nat_fake=%v, want %s -> %s without NAT",
			n.Name, sa.LocalHost, sa.RemoteHost, sa.NATAny, sa.NATFake, n.Addr, n.Peer)
	}
	if len(sa.Children) != 1 {
		t.Errorf("%s: %d CHILD_SAs, want 1:\n%s", n.Name, len(sa.Children), out)
		return
	}
	c := sa.Children[0]
	if c.Name != sc.Conn || c.State != "INSTALLED" || c.Mode != "TRANSPORT" || c.Protocol != "ESP" || c.Encap {
		t.Errorf("%s: CHILD_SA name/state/mode/protocol/encap = %s/%s/%s/%s/%v, want %s/INSTALLED/TRANSPORT/ESP/false",
			n.Name, c.Name, c.State, c.Mode, c.Protocol, c.Encap, sc.Conn)
	}
	if c.EncrAlg != "AES_GCM_16" || c.EncrKeySize != 128 {
		t.Errorf("%s: CHILD_SA cipher %s-%d, want AES_GCM_16-128 (%s)", n.Name, c.EncrAlg, c.EncrKeySize, sc.ESPProposal)
	}
	if min := uint64(sc.Pings); c.PacketsIn < min || c.PacketsOut < min || c.BytesIn == 0 || c.BytesOut == 0 {
		t.Errorf("%s: CHILD_SA packets in/out = %d/%d, bytes %d/%d; want at least %d packets each way after the ping",
			n.Name, c.PacketsIn, c.PacketsOut, c.BytesIn, c.BytesOut, min)
	}
	if !slices.Equal(c.LocalTS, []string{n.Addr + "/32"}) || !slices.Equal(c.RemoteTS, []string{n.Peer + "/32"}) {
		t.Errorf("%s: CHILD_SA TS %v === %v, want %s/32 === %s/32", n.Name, c.LocalTS, c.RemoteTS, n.Addr, n.Peer)
	}
}

// checkKernelStates: the kernel itself holds the SAs, one ESP state each
// way, in transport mode (`ip xfrm state`). It returns their SPIs, sorted.
func checkKernelStates(t *testing.T, n Node, out string) []uint32 {
	t.Helper()
	spis := matchSPIs(`proto esp spi (0x[0-9a-f]+)`, out)
	if transport := strings.Count(out, "mode transport"); len(spis) < 2 || transport < 2 {
		t.Errorf("%s: ip xfrm state shows %d ESP states (%d in transport mode), want 2 or more:\n%s", n.Name, len(spis), transport, out)
	}
	return spis
}

// checkWire: during the ping the link carried ESP of the kernel's SAs, a
// request and a reply per ping, and no other IPv4 packet: no ICMP in clear.
// (IPv6 link-local chatter such as router solicitations may appear.)
func checkWire(t *testing.T, out string, sc Scenario, kernelSPIs []uint32) {
	t.Helper()
	esp := 0
	for _, line := range strings.Split(out, "\n") {
		if !strings.Contains(line, " IP ") {
			continue
		}
		if strings.Contains(line, ": ESP(spi=") {
			esp++
		} else {
			t.Errorf("wire at %s: an IPv4 packet that is not ESP: %s", sc.Nodes[1].Name, line)
		}
	}
	if esp < 2*sc.Pings {
		t.Errorf("wire at %s: %d ESP packets, want %d or more:\n%s", sc.Nodes[1].Name, esp, 2*sc.Pings, out)
	}
	for _, spi := range matchSPIs(`ESP\(spi=(0x[0-9a-f]+)`, out) {
		if !slices.Contains(kernelSPIs, spi) {
			t.Errorf("wire: ESP with SPI %#x, which is not one of the kernel's SAs %#x", spi, kernelSPIs)
		}
	}
}

// matchSPIs returns the distinct SPIs the first group of re finds, sorted.
func matchSPIs(re, out string) []uint32 {
	var spis []uint32
	for _, m := range regexp.MustCompile(re).FindAllStringSubmatch(out, -1) {
		v, err := strconv.ParseUint(m[1], 0, 32)
		if err == nil && !slices.Contains(spis, uint32(v)) {
			spis = append(spis, uint32(v))
		}
	}
	slices.Sort(spis)
	return spis
}

// buildStatic builds the named commands from cmd/ without cgo: the guest
// has Debian's libc, but a static binary depends on nothing in it.
func buildStatic(ctx context.Context, t *testing.T, dir string, names ...string) map[string]string {
	t.Helper()
	gobin, err := exec.LookPath("go")
	if err != nil {
		gobin = "/usr/local/go/bin/go"
	}
	out := map[string]string{}
	for _, name := range names {
		dst := filepath.Join(dir, name)
		cmd := exec.CommandContext(ctx, gobin, "build", "-trimpath",
			"-ldflags", "-X github.com/obol-ipsec/obol/internal/daemon.Version=kernelesp-test",
			"-o", dst, "github.com/obol-ipsec/obol/cmd/"+name)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("build %s (CGO_ENABLED=0 %s build): %v\n%s", name, gobin, err, b)
		}
		out[name] = dst
	}
	return out
}

func TestParseConsole(t *testing.T) {
	raw := "boot noise\r\n@@obol begin a\r\nline 1\r\n\r\nline 3\r\n@@obol end a rc=0 start=10.25 end=12.75\r\n[ 1.0] kernel\r\n" +
		"@@obol begin b\n\n@@obol end b rc=2\n@@obol done failed=1\n"
	c, err := ParseConsole([]byte(raw))
	if err != nil {
		t.Fatal(err)
	}
	if !c.Done || c.Failed != 1 || !slices.Equal(c.Order, []string{"a", "b"}) ||
		c.Sections["a"].Output != "line 1\n\nline 3" || c.Sections["b"].RC != 2 || c.Sections["b"].Output != "" || c.Sections["a"].Took != 2500*time.Millisecond {
		t.Fatalf("parsed %+v", c)
	}
	for _, bad := range []string{
		"@@obol begin a\nx\n",                                                    // never ends
		"@@obol begin a\n@@obol begin b\n",                                       // nested
		"@@obol end a rc=0\n",                                                    // no begin
		"@@obol begin a\n@@obol end a rc=x\n",                                    // bad rc
		"@@obol begin a\n@@obol end b rc=0\n",                                    // wrong end
		"@@obol begin a\n@@obol end a rc=0\n@@obol begin a\n@@obol end a rc=0\n", // twice
	} {
		if _, err := ParseConsole([]byte(bad)); err == nil {
			t.Errorf("ParseConsole(%q) accepted", bad)
		}
	}
	c, _ = ParseConsole([]byte("@@obol initramfs failed: no /dev/vda\n"))
	if len(c.Problems) != 1 || c.Done {
		t.Fatalf("problems %+v", c)
	}
}

func TestLoadOrder(t *testing.T) {
	dir := t.TempDir()
	dep := "kernel/fs/ext4/ext4.ko: kernel/lib/crc16.ko kernel/fs/mbcache.ko kernel/fs/jbd2/jbd2.ko\n" +
		"kernel/lib/crc16.ko:\nkernel/fs/mbcache.ko:\nkernel/fs/jbd2/jbd2.ko:\n" +
		"kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko\n" +
		"kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko\n" +
		"kernel/drivers/virtio/virtio_ring.ko:\nkernel/crypto/crc32c-generic.ko:\n"
	if err := os.WriteFile(filepath.Join(dir, "modules.dep"), []byte(dep), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "modules.builtin"), []byte("kernel/crypto/aes_generic.ko\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	ix, err := readModuleIndex(dir)
	if err != nil {
		t.Fatal(err)
	}
	order, err := ix.loadOrder([]string{"virtio_pci", "crc32c_generic", "aes_generic", "ext4"})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"virtio_ring", "virtio", "virtio_pci", "crc32c_generic", "crc16", "mbcache", "jbd2", "ext4"}
	if !slices.Equal(order, want) {
		t.Fatalf("order %v, want %v", order, want)
	}
	if _, err := ix.loadOrder([]string{"esp4"}); err == nil || !strings.Contains(err.Error(), "esp4") {
		t.Fatalf("unknown module: %v", err)
	}
}

// TestScenarioScript renders the guest script and has bash parse it, so a
// template or shell syntax slip shows without booting a guest.
func TestScenarioScript(t *testing.T) {
	b, err := DefaultScenario().Script()
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "init")
	if err := os.WriteFile(p, b, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("bash", "-n", p).CombinedOutput(); err != nil {
		t.Fatalf("bash -n: %v\n%s", err, out)
	}
	for _, want := range []string{"mode = transport", "esp_proposals = aes128gcm16", "192.0.2.11/24", "veth-hostb"} {
		if !strings.Contains(string(b), want) {
			t.Errorf("script lacks %q", want)
		}
	}
}
