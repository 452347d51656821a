package config

import (
	"errors"
	"fmt"
	"github.com/obol-ipsec/obol/tokenapi"
	"os"
	"os/user"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/obol-ipsec/obol/internal/labels"
)

// problem is a validation error at a resolved key path ("conn[0].local.auth").
type problem struct {
	path string
	msg  string
}

var prefixRE = regexp.MustCompile(`^[A-Za-z0-9_-]{1,16}$`)

// validate checks what the types alone cannot: required keys, cross-field
// rules and referenced files. It returns every problem.
func (c *Config) validate() []problem {
	var ps []problem
	bad := func(path, format string, args ...any) {
		ps = append(ps, problem{path, fmt.Sprintf(format, args...)})
	}
	if !filepath.IsAbs(c.Charon.VICISocket) {
		bad("charon.vici_socket", "vici_socket %q is not an absolute path; write charon's VICI socket path, e.g. \"/var/run/charon.vici\" (no unix:// prefix)", c.Charon.VICISocket)
	}
	if c.Charon.CallTimeout <= 0 {
		bad("charon.call_timeout", "call_timeout must be more than zero; write e.g. \"10s\"")
	}
	if !prefixRE.MatchString(c.Obold.ConnPrefix) {
		bad("obold.conn_prefix", "conn_prefix %q is unusable: obold owns every conn whose name starts with it, so it must be 1 to 16 letters, digits, '-' or '_'; write e.g. \"obol-\"", c.Obold.ConnPrefix)
	}
	if c.Obold.ReconcileInterval < Duration(100e6) {
		bad("obold.reconcile_interval", "reconcile_interval must be at least \"100ms\"; write e.g. \"5s\"")
	}
	if !filepath.IsAbs(c.Control.Socket) {
		bad("control.socket", "socket %q is not an absolute path; write e.g. \"/run/obol/obold.sock\"", c.Control.Socket)
	}
	if c.Control.Group != "" {
		if _, err := user.LookupGroup(c.Control.Group); err != nil {
			bad("control.group", "group %q does not exist on this host; create it or remove the key (root only)", c.Control.Group)
		}
	}
	if !c.Labels.Empty() || c.Labels.Mode != "" {
		// New checks the host too (mode = "selinux" needs SELinux).
		if _, err := labels.New(c.Labels, nil); err != nil {
			var lps labels.Problems
			if errors.As(err, &lps) {
				for _, p := range lps {
					ps = append(ps, problem{p.Path, p.Msg})
				}
			} else {
				ps = append(ps, problem{"labels", err.Error()})
			}
		}
	}
	for _, p := range c.OE.Validate() {
		ps = append(ps, problem{p.Path, p.Msg})
	}
	var authPlugins []string
	for _, p := range c.Auth.Plugins {
		authPlugins = append(authPlugins, p.Name)
	}
	for _, p := range c.Auth.Validate(c.OE.DNS.RequireDNSSEC, authPlugins) {
		ps = append(ps, problem{p.Path, p.Msg})
	}
	if c.OE.Enabled() && c.OE.KeyFile != "" {
		if _, err := os.ReadFile(c.OE.KeyFile); err != nil {
			ps = append(ps, problem{"oe.key_file", fmt.Sprintf("cannot read key_file %q: %v; fix the path (relative paths start at the config's directory) or the file's permissions", c.OE.KeyFile, err)})
		}
	}
	if c.TokenAPI.Enabled {
		for _, g := range c.TokenAPI.LowerGroups {
			if err := tokenapi.CheckGroup(g); err != nil {
				ps = append(ps, problem{"tokenapi.lower_groups", err.Error()})
			}
		}
		if err := c.TokenAPI.Config.WithDefaults().Validate(); err != nil {
			ps = append(ps, problem{"tokenapi", err.Error() + "; fix [tokenapi]"})
		}
	}
	if c.Modules.TokenAPI.External() && !c.TokenAPI.Enabled {
		bad("modules.tokenapi", "a token API plugin without the token API: set [tokenapi] enabled = true or remove [modules.tokenapi]")
	}
	plugins := []struct {
		key string
		p   Plugin
	}{{"modules.resolver", c.Modules.Resolver}, {"modules.labels", c.Modules.Labels}, {"modules.xfrm", c.Modules.XFRM}, {"modules.tokenapi", c.Modules.TokenAPI}}
	for i, ap := range c.Auth.Plugins {
		if !ap.External() {
			bad(fmt.Sprintf("auth.plugin[%d].plugin", i), "an auth plugin needs plugin = \"/path/to/binary\"")
			continue
		}
		plugins = append(plugins, struct {
			key string
			p   Plugin
		}{fmt.Sprintf("auth.plugin[%d]", i), ap.Plugin})
	}
	for _, m := range plugins {
		if !m.p.External() {
			if len(m.p.Args)+len(m.p.Env) > 0 || m.p.CallTimeout != 0 || m.p.MaxBackoff != 0 {
				bad(m.key, "settings without a plugin: write plugin = \"/path/to/binary\" or remove the section (the module then runs built in)")
			}
			continue
		}
		if fi, err := os.Stat(m.p.Path); err != nil {
			bad(m.key+".plugin", "plugin %q: %v; build it (make plugins) or fix the path (relative paths start at the config's directory)", m.p.Path, err)
		} else if fi.IsDir() || fi.Mode().Perm()&0o111 == 0 {
			bad(m.key+".plugin", "plugin %q is not an executable file; chmod +x it or fix the path", m.p.Path)
		}
		if m.p.CallTimeout < 0 || m.p.MaxBackoff < 0 {
			bad(m.key, "call_timeout and max_backoff must not be negative; write e.g. \"3s\"")
		}
		for _, e := range m.p.Env {
			if k, _, ok := strings.Cut(e, "="); !ok || k == "" {
				bad(m.key+".env", "env entry %q is not KEY=VALUE", e)
			}
		}
	}
	entries := map[string]bool{}
	for _, e := range c.Labels.Entries {
		entries[e.Name] = true
	}
	names := map[Name]int{}
	for i := range c.Conns {
		ps = append(ps, c.Conns[i].validate(fmt.Sprintf("conn[%d]", i), names, i, entries)...)
	}
	return ps
}

func (cn *Conn) validate(at string, names map[Name]int, idx int, labelEntries map[string]bool) []problem {
	var ps []problem
	bad := func(path, format string, args ...any) {
		ps = append(ps, problem{path, fmt.Sprintf(format, args...)})
	}
	if strings.HasPrefix(string(cn.Name), "oe-") {
		bad(at+".name", "conn names starting with \"oe-\" are kept for obold's OE tunnels; choose another name")
	}
	if cn.Name == "" {
		bad(at, "this [[conn]] has no name; add name = \"...\" (obold loads it as conn_prefix + name)")
	} else if prev, dup := names[cn.Name]; dup {
		bad(at+".name", "conn name %q is used twice (also by conn #%d); give each [[conn]] its own name", cn.Name, prev+1)
	} else {
		names[cn.Name] = idx
	}
	switch cn.Version {
	case 0, 1, 2:
	default:
		bad(at+".version", "version %d is not an IKE version; write 2 (IKEv2), 1 (IKEv1) or leave it out for either", cn.Version)
	}
	for _, sa := range []struct {
		side string
		a    *Auth
	}{{"local", &cn.Local}, {"remote", &cn.Remote}} {
		side, a := sa.side, sa.a
		p := at + "." + side
		switch a.Auth {
		case "":
			bad(p, "[%s.%s] needs auth; write auth = \"pubkey\" or auth = \"psk\"", at, side)
		case "psk":
			if cn.PSKFile == "" {
				bad(p+".auth", "auth = \"psk\" needs the secret: add psk_file = \"PATH\" to this [[conn]]")
			}
		}
		if side == "local" && len(a.Pubkeys) > 0 {
			bad(p+".pubkeys", "pubkeys are the peer's keys; move them to [conn.remote]")
		}
		if side == "remote" && a.KeyFile != "" {
			bad(p+".key_file", "key_file is our own private key; move it to [conn.local]")
		}
	}
	if cn.Local.Auth == "pubkey" && cn.Local.KeyFile == "" {
		bad(at+".local.auth", "auth = \"pubkey\" needs our private key: add key_file = \"PATH\" (PEM) to [conn.local]")
	}
	if cn.Remote.Auth == "pubkey" && len(cn.Remote.Pubkeys) == 0 {
		bad(at+".remote.auth", "auth = \"pubkey\" needs the peer's public key: add pubkeys = [\"PATH\"] (PEM) to [conn.remote]")
	}
	checkFile := func(path, file, what string) {
		if file == "" {
			return
		}
		if _, err := os.ReadFile(file); err != nil {
			bad(path, "cannot read %s %q: %v; fix the path (relative paths start at the config's directory) or the file's permissions", what, file, err)
		}
	}
	checkFile(at+".psk_file", cn.PSKFile, "psk_file")
	checkFile(at+".local.key_file", cn.Local.KeyFile, "key_file")
	for _, f := range cn.Remote.Pubkeys {
		checkFile(at+".remote.pubkeys", f, "public key")
	}
	if len(cn.Children) == 0 {
		bad(at, "conn %q has no [[conn.child]]; add one with name, local_ts and remote_ts", cn.Name)
	}
	childNames := map[Name]bool{}
	usedEntries := map[string]bool{}
	for j, ch := range cn.Children {
		cp := fmt.Sprintf("%s.child[%d]", at, j)
		if ch.LabelEntry != "" {
			if usedEntries[ch.LabelEntry] {
				bad(cp+".label_entry", "label entry %q is named by two children of conn %q; name it once", ch.LabelEntry, cn.Name)
			}
			usedEntries[ch.LabelEntry] = true
		}
		if ch.Name == "" && ch.LabelEntry == "" {
			bad(cp, "this [[conn.child]] has no name; add name = \"...\"")
		} else if ch.Name != "" && childNames[ch.Name] {
			bad(cp+".name", "child name %q is used twice in conn %q; give each child its own name", ch.Name, cn.Name)
		}
		childNames[ch.Name] = true
		switch {
		case ch.LabelEntry != "" && (ch.Label != "" || ch.LabelMode != ""):
			bad(cp+".label_entry", "label_entry takes its labels and label mode from [labels]; remove label and label_mode from this child")
		case ch.LabelEntry != "" && !labelEntries[ch.LabelEntry]:
			bad(cp+".label_entry", "label_entry %q names no [[labels.entry]]; add that entry or fix the name", ch.LabelEntry)
		case ch.LabelMode != "" && ch.Label == "":
			bad(cp+".label_mode", "label_mode without label does nothing; add label = \"...\" or remove label_mode")
		}
	}
	return ps
}
