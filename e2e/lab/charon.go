package lab

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// charonConf is the node's strongswan.conf (lab.md; one key per line, values
// run to the end of the line). Notes:
//   - filelog sections are named, with the file in `path`: a path as the
//     section name is a syntax error in 5.9.8 ('.' is not allowed there).
//   - error-notify and lookip default to sockets in /var/run that every
//     charon would fight over: they go to the node's directory, as does the
//     resolve plugin's resolv.conf (it would rewrite /etc/resolv.conf).
//   - fwmark 0x42 on charon's sockets and !0x42 on its routing rule let IKE
//     and ESP-in-UDP skip libipsec's table 220; host-to-host needs it, and
//     gateways work with it too (TestIPsecDatapaths).
//   - tpm and pkcs11 only log load failures here.
//   - charon-systemd reads no ipsec.conf/swanctl.conf (no stroke plugin is
//     installed and swanctl is never run by charon itself).
const charonConf = `# Written by obol's e2e lab for node %[1]s; charon-systemd reads it through STRONGSWAN_CONF.
charon-systemd {
	load_modular = yes
	plugins {
		include /etc/strongswan.d/charon/*.conf
		kernel-libipsec {
			load = yes
			allow_peer_ts = yes
		}
		vici {
			socket = unix://%[2]s/charon.vici
		}
		socket-default {
			fwmark = 0x42
		}
		kernel-netlink {
			fwmark = !0x42
		}
		error-notify {
			socket = unix://%[2]s/charon.enfy
		}
		lookip {
			socket = unix://%[2]s/charon.lkp
		}
		resolve {
			file = %[2]s/resolv.conf
		}
		tpm {
			load = no
		}
		pkcs11 {
			load = no
		}
	}
	journal {
		default = -1
	}
	filelog {
		lab {
			path = %[2]s/charon.log
			default = 1
			ike = 2
			flush_line = yes
			time_format = %%T
			time_add_ms = yes
		}
	}
%[3]s
}
`

// CharonLog is the path of the node's charon log (filelog, flushed per line).
func (n *Node) CharonLog() string { return filepath.Join(n.Dir, "charon.log") }

// StartCharon (re)starts the node's charon-systemd and waits until its VICI
// socket answers a `version` request. A running charon is stopped first.
func (n *Node) StartCharon(ctx context.Context) error {
	if n.VICI == "" {
		return fmt.Errorf("node %s has no charon: list it in Options.Charon", n.Name)
	}
	n.startMu.Lock()
	defer n.startMu.Unlock()
	if err := n.StopCharon(); err != nil {
		return err
	}
	conf := filepath.Join(n.Dir, "strongswan.conf")
	text := fmt.Sprintf(charonConf, n.Name, n.Dir, n.lab.opts.CharonConf)
	if err := os.WriteFile(conf, []byte(text), 0o644); err != nil {
		return fmt.Errorf("writing %s: %w", conf, err)
	}
	// A killed charon leaves its socket behind.
	if err := os.Remove(n.VICI); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("removing stale VICI socket: %w", err)
	}
	t0 := time.Now()
	p, err := n.Start(ctx, "charon-systemd", []string{n.lab.tools.path("charon-systemd")}, []string{"STRONGSWAN_CONF=" + conf})
	if err != nil {
		return err
	}
	n.mu.Lock()
	n.charon = p
	n.mu.Unlock()

	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for {
		if err := viciPing(ctx, n.VICI); err == nil {
			n.lab.log.Debug("charon up", "node", n.Name, "pid", p.PID, "elapsed", time.Since(t0))
			return nil
		}
		if p.Exited() {
			return fmt.Errorf("charon on %s exited during start-up; its output:\n%s\ncharon.log:\n%s",
				n.Name, tail(p.Log, 10), tail(n.CharonLog(), 10))
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("charon on %s: VICI %s not answering after %v (see %s): %w",
				n.Name, n.VICI, time.Since(t0).Round(time.Millisecond), n.CharonLog(), ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// StopCharon stops the node's charon (SIGTERM, SIGKILL after 3 s). No-op if
// none runs.
func (n *Node) StopCharon() error {
	p := n.Charon()
	if p == nil {
		return nil
	}
	return p.Stop(3 * time.Second)
}

// KillCharon SIGKILLs the node's charon and waits until it is gone, for
// restart tests. No-op if none runs.
func (n *Node) KillCharon() error {
	p := n.Charon()
	if p == nil {
		return nil
	}
	return p.Kill()
}

// Charon returns the node's most recently started charon, or nil.
func (n *Node) Charon() *Process {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.charon
}

// Swanctl runs swanctl in the node's namespace against its charon: args are
// the command and its options, e.g. ("--stats") or ("--load-all", "--file", f);
// --uri is added.
func (n *Node) Swanctl(ctx context.Context, args ...string) ([]byte, error) {
	if n.VICI == "" {
		return nil, fmt.Errorf("node %s has no charon: list it in Options.Charon", n.Name)
	}
	if len(args) == 0 {
		return nil, errors.New("Swanctl: give a command, e.g. --stats")
	}
	argv := append([]string{n.lab.tools.path("swanctl"), args[0], "--uri", "unix://" + n.VICI}, args[1:]...)
	return n.Exec(ctx, argv...)
}

// WriteFile writes data to name inside the node's directory and returns the path.
func (n *Node) WriteFile(name string, data []byte) (string, error) {
	if name == "" || filepath.IsAbs(name) || strings.Contains(filepath.Clean(name), "..") {
		return "", fmt.Errorf("WriteFile: %q must be a relative name inside the node directory", name)
	}
	p := filepath.Join(n.Dir, name)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return "", fmt.Errorf("WriteFile: %w", err)
	}
	if err := os.WriteFile(p, data, 0o644); err != nil {
		return "", fmt.Errorf("WriteFile: %w", err)
	}
	return p, nil
}

// viciPing sends a VICI `version` command and checks for a CMD_RESPONSE:
// a listening socket alone does not mean charon serves requests yet.
// Wire format: 32-bit big-endian length, then type (0 = CMD_REQUEST), name
// length, name; the answer's type is 1 (CMD_RESPONSE).
func viciPing(ctx context.Context, path string) error {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return err
	}
	defer c.Close()
	deadline := time.Now().Add(time.Second)
	if dl, ok := ctx.Deadline(); ok && dl.Before(deadline) {
		deadline = dl
	}
	c.SetDeadline(deadline)
	const name = "version"
	pkt := make([]byte, 4, 4+2+len(name))
	binary.BigEndian.PutUint32(pkt, uint32(2+len(name)))
	pkt = append(pkt, 0, byte(len(name)))
	pkt = append(pkt, name...)
	if _, err := c.Write(pkt); err != nil {
		return err
	}
	var hdr [5]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		return err
	}
	if hdr[4] != 1 {
		return fmt.Errorf("VICI answered type %d, want CMD_RESPONSE", hdr[4])
	}
	return nil
}
