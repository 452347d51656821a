package labels

import (
	"errors"
	"strings"
	"testing"
)

const (
	spd    = "system_u:object_r:ipsec_spd_t:s0-s3:c0.c127"
	httpS1 = "system_u:system_r:httpd_t:s1"
	httpC1 = "system_u:system_r:httpd_t:s2:c1"
)

// baseConfig is a valid policy every validation case spoils in one way.
func baseConfig() Config {
	return Config{
		Mode:  "simple",
		Allow: []AllowRule{{"httpd_t", "ipsec_spd_t"}, {"sshd_t", "ipsec_spd_t"}},
		Entries: []EntryConfig{
			{Name: "web", Local: "10.1.0.0/24", Remote: "10.2.0.0/24", Protocol: "tcp", RemotePorts: "443", Required: true,
				Context: spd, Labels: []string{httpS1, httpC1}},
			{Name: "lan", Local: "10.1.0.0/16", Remote: "10.2.0.0/16", Context: "system_u:object_r:ipsec_spd_t:s0-s15:c0.c1023"},
			{Name: "smk", Local: "fd00:1::/64", Remote: "fd00:2::/64", DOI: "smack", Required: true, Labels: []string{"WebData", "*"}},
			{Name: "opq", Local: "192.168.0.0/24", Remote: "192.168.1.0/24", Protocol: "udp", LocalPorts: "1000-2000",
				DOI: "opaque", Labels: []string{"blob one"}},
		},
	}
}

func TestValidateBase(t *testing.T) {
	if ps := baseConfig().Validate(); len(ps) != 0 {
		t.Fatalf("base config has problems: %v", ps)
	}
	if ps := (Config{}).Validate(); len(ps) != 0 {
		t.Fatalf("zero config has problems: %v", ps)
	}
	if !(Config{}).Empty() || baseConfig().Empty() {
		t.Error("Empty wrong")
	}
}

// TestValidate: every kind of mistake and contradiction, each reported at
// its key with what to write.
func TestValidate(t *testing.T) {
	type want struct{ path, msg string }
	tests := []struct {
		name string
		edit func(c *Config)
		want []want
	}{
		{"unknown mode", func(c *Config) { c.Mode = "enforcing" },
			[]want{{"labels.mode", `mode "enforcing" is unknown; write "auto", "simple" or "selinux"`}}},
		{"allow without source", func(c *Config) { c.Allow[0].Source = "" },
			[]want{{"labels.allow[0].source", `this [[labels.allow]] has no source; write source = "httpd_t"`}}},
		{"allow with a context", func(c *Config) { c.Allow[0].Target = spd },
			[]want{{"labels.allow[0].target", `target "system_u:object_r:ipsec_spd_t:s0-s3:c0.c127" is a context, not a type; write the type alone, e.g. "ipsec_spd_t"`}}},
		{"allow with a bad type", func(c *Config) { c.Allow[1].Source = "ssh-d" },
			[]want{{"labels.allow[1].source", `source "ssh-d" is not a type name`}}},
		{"allow twice", func(c *Config) { c.Allow = append(c.Allow, AllowRule{"httpd_t", "ipsec_spd_t"}) },
			[]want{{"labels.allow[2]", `"allow httpd_t ipsec_spd_t:association polmatch" is the same rule as labels.allow[0]; remove one`}}},
		{"entry without name", func(c *Config) { c.Entries[1].Name = "" },
			[]want{{"labels.entry[1]", `this [[labels.entry]] has no name`}}},
		{"bad name", func(c *Config) { c.Entries[1].Name = "lan.b" },
			[]want{{"labels.entry[1].name", `entry name "lan.b" is unusable: it names CHILD_SAs in charon, so it must be 1 to 32 letters, digits, '-' or '_'; write e.g. "lan-b"`}}},
		{"duplicate name", func(c *Config) { c.Entries[1].Name = "web" },
			[]want{{"labels.entry[1].name", `entry name "web" is used twice (also by labels.entry[0])`}}},
		{"missing local", func(c *Config) { c.Entries[1].Local = "" },
			[]want{{"labels.entry[1].local", `local missing; write a CIDR such as "10.1.0.0/24"`}}},
		{"bare address", func(c *Config) { c.Entries[1].Remote = "10.2.0.1" },
			[]want{{"labels.entry[1].remote", `remote "10.2.0.1" is an address, not a CIDR; write "10.2.0.1/32"`}}},
		{"host bits", func(c *Config) { c.Entries[1].Local = "10.1.2.3/16" },
			[]want{{"labels.entry[1].local", `local "10.1.2.3/16" has host bits set; write "10.1.0.0/16"`}}},
		{"not a CIDR", func(c *Config) { c.Entries[1].Local = "lan" },
			[]want{{"labels.entry[1].local", `local "lan" is not a CIDR`}}},
		{"mixed families", func(c *Config) { c.Entries[1].Remote = "fd00::/64" },
			[]want{{"labels.entry[1].remote", `local 10.1.0.0/16 and remote fd00::/64 are of different address families`}}},
		{"unknown protocol", func(c *Config) { c.Entries[1].Protocol = "http" },
			[]want{{"labels.entry[1].protocol", `protocol "http" is unknown; write "any", "tcp", "udp", "icmp", "icmpv6", "sctp" or an IP protocol number`}}},
		{"protocol in capitals", func(c *Config) { c.Entries[1].Protocol = "TCP" },
			[]want{{"labels.entry[1].protocol", `protocol "TCP" is in capitals; write "tcp"`}}},
		{"protocol 0", func(c *Config) { c.Entries[1].Protocol = "0" },
			[]want{{"labels.entry[1].protocol", `protocol 0 is ambiguous; write "any"`}}},
		{"protocol 256", func(c *Config) { c.Entries[1].Protocol = "256" },
			[]want{{"labels.entry[1].protocol", `protocol 256 is not an IP protocol number`}}},
		{"port 0", func(c *Config) { c.Entries[0].RemotePorts = "0" },
			[]want{{"labels.entry[0].remote_ports", `port 0 is not a port; leave the key out (or "") for any port`}}},
		{"port too big", func(c *Config) { c.Entries[0].RemotePorts = "70000" },
			[]want{{"labels.entry[0].remote_ports", `70000 is not a port; write 1 to 65535`}}},
		{"ports backwards", func(c *Config) { c.Entries[3].LocalPorts = "2000-1000" },
			[]want{{"labels.entry[3].local_ports", `ports "2000-1000" run backwards; write "1000-2000"`}}},
		{"port list", func(c *Config) { c.Entries[0].RemotePorts = "443,80" },
			[]want{{"labels.entry[0].remote_ports", `lists several ports; write one port or one range`}}},
		{"signed port", func(c *Config) { c.Entries[0].RemotePorts = "+443" },
			[]want{{"labels.entry[0].remote_ports", `"+443" is not a port number`}}},
		{"port name", func(c *Config) { c.Entries[0].RemotePorts = "https" },
			[]want{{"labels.entry[0].remote_ports", `"https" is not a port number`}}},
		{"ports without protocol", func(c *Config) { c.Entries[1].RemotePorts = "22" },
			[]want{{"labels.entry[1].remote_ports", `ports need a protocol; add protocol = "tcp"`}}},
		{"ports with icmp", func(c *Config) { c.Entries[0].Protocol = "icmp" },
			[]want{{"labels.entry[0].remote_ports", `ports need protocol "tcp", "udp" or "sctp", not "icmp"`}}},
		{"unknown doi", func(c *Config) { c.Entries[2].DOI = "cipso" },
			[]want{{"labels.entry[2].doi", `doi "cipso" is unknown; write "selinux", "smack" or "opaque"`}}},
		{"selinux without context", func(c *Config) { c.Entries[1].Context = "" },
			[]want{{"labels.entry[1].context", `this selinux entry has no context; write the entry's own label`}}},
		{"unparseable context", func(c *Config) { c.Entries[0].Context = "system_u:object_r:ipsec_spd_t:s0-s3:c5.c2" },
			[]want{{"labels.entry[0].context", `context "system_u:object_r:ipsec_spd_t:s0-s3:c5.c2" at byte 36: category range c5.c2 runs backwards; write c2.c5`}}},
		{"smack with context", func(c *Config) { c.Entries[2].Context = "WebData" },
			[]want{{"labels.entry[2].context", `smack entries do not use context: they admit exactly the labels in labels; remove context`}}},
		{"required without labels", func(c *Config) { c.Entries[0].Labels = nil },
			[]want{{"labels.entry[0].required", `required = true but the entry lists no labels, so no SA could ever carry its traffic; add labels = [...] or write required = false`}}},
		{"required smack without labels", func(c *Config) { c.Entries[2].Labels = nil },
			[]want{{"labels.entry[2].required", `required = true but the entry lists no labels`}}},
		{"unparseable label", func(c *Config) { c.Entries[0].Labels[1] = "system_u:system_r:httpd_t:s2:c1,c1" },
			[]want{{"labels.entry[0].labels[1]", `label "system_u:system_r:httpd_t:s2:c1,c1" at byte 32: category c1 is listed twice`}}},
		{"Smack label on an SELinux entry", func(c *Config) { c.Entries[0].Labels[1] = "WebData" },
			[]want{{"labels.entry[0].labels[1]", `it looks like a Smack label: if it is one, write doi = "smack" on this entry`}}},
		{"SELinux label on a Smack entry", func(c *Config) { c.Entries[2].Labels[1] = httpS1 },
			[]want{{"labels.entry[2].labels[1]", `label system_u:system_r:httpd_t:s1 is an SELinux context but this entry has doi = "smack"`}}},
		{"bad Smack label", func(c *Config) { c.Entries[2].Labels[1] = "-x" },
			[]want{{"labels.entry[2].labels[1]", `label "-x" at byte 0: Smack labels may not start with '-'`}}},
		{"label twice, other spelling", func(c *Config) {
			c.Entries[0].Labels = []string{"system_u:system_r:httpd_t:s2:c1.c3", "system_u:system_r:httpd_t:s2:c1,c2,c3"}
		}, []want{{"labels.entry[0].labels[1]", `label system_u:system_r:httpd_t:s2:c1.c3 is listed twice (also as labels[0]); remove one`}}},
		{"label without TE rule", func(c *Config) { c.Entries[0].Labels[0] = "system_u:system_r:named_t:s1" },
			[]want{{"labels.entry[0].labels[0]", `entry "web" lists label system_u:system_r:named_t:s1 but refuses it (no TE allow rule): no TE rule lets type named_t use type ipsec_spd_t (allow named_t ipsec_spd_t:association polmatch); the policy contradicts itself: add [[labels.allow]] source = "named_t" target = "ipsec_spd_t", or remove the label`}}},
		{"label above the entry's high", func(c *Config) { c.Entries[0].Labels[0] = "system_u:system_r:httpd_t:s5" },
			[]want{{"labels.entry[0].labels[0]", `entry "web" lists label system_u:system_r:httpd_t:s5 but refuses it (level above the entry's high): its level s5 is above the entry's high s3:c0.c127; the policy contradicts itself: raise the entry's high level to dominate s5, or remove the label`}}},
		{"label below the entry's low", func(c *Config) {
			c.Entries[0].Context = "system_u:object_r:ipsec_spd_t:s1-s3:c0.c127"
			c.Entries[0].Labels[0] = "system_u:system_r:httpd_t:s0-s2"
		}, []want{{"labels.entry[0].labels[0]", `(level below the entry's low): its low level s0 is below the entry's low s1; the policy contradicts itself: lower the entry's low level to s0 or below`}}},
		{"label incomparable with the entry's high", func(c *Config) { c.Entries[0].Labels[0] = "system_u:system_r:httpd_t:s2:c200" },
			[]want{{"labels.entry[0].labels[0]", `(level incomparable with the entry's range): its level s2:c200 is incomparable with the entry's high s3:c0.c127 (the entry's high has no c200)`}}},
		{"label incomparable with the entry's low", func(c *Config) {
			c.Entries[0].Context = "system_u:object_r:ipsec_spd_t:s0:c1-s3:c0.c127"
			c.Entries[0].Labels[0] = "system_u:system_r:httpd_t:s2:c2"
		}, []want{{"labels.entry[0].labels[0]", `its level s2:c2 is incomparable with the entry's low s0:c1 (it lacks the entry's c1)`}}},
		{"label without a level on an MLS entry", func(c *Config) { c.Entries[0].Labels[0] = "system_u:system_r:httpd_t" },
			[]want{{"labels.entry[0].labels[0]", `(level on one side only): it has no level but the entry's context has s0-s3:c0.c127`}}},
		{"labeled entry without a level", func(c *Config) { c.Entries[0].Context = "system_u:object_r:ipsec_spd_t" },
			[]want{
				{"labels.entry[0].labels[0]", `it has level s1 but the entry's context has none`},
				{"labels.entry[0].labels[1]", `it has level s2:c1 but the entry's context has none`},
			}},
		{"same selector, required differs", func(c *Config) {
			c.Entries = append(c.Entries, EntryConfig{Name: "web2", Local: "10.1.0.0/24", Remote: "10.2.0.0/24", Protocol: "tcp", RemotePorts: "443", Context: spd})
		}, []want{{"labels.entry[4]", `entry "web2" has the same selector as entry "web" (10.1.0.0/24 -> 10.2.0.0/24 tcp remote port 443) but contradicts it (required = false here, true there); a selector has one policy: keep one entry`}}},
		{"same selector, context differs", func(c *Config) {
			c.Entries = append(c.Entries, EntryConfig{Name: "lan2", Local: "10.1.0.0/16", Remote: "10.2.0.0/16", Context: spd})
		}, []want{{"labels.entry[4]", `but contradicts it (context system_u:object_r:ipsec_spd_t:s0-s3:c0.c127 here, system_u:object_r:ipsec_spd_t:s0-s15:c0.c1023 there)`}}},
		{"same selector, DOI differs", func(c *Config) {
			c.Entries = append(c.Entries, EntryConfig{Name: "lan2", Local: "10.1.0.0/16", Remote: "10.2.0.0/16", DOI: "opaque"})
		}, []want{{"labels.entry[4]", `but contradicts it (doi opaque here, selinux there)`}}},
		{"same selector, same policy", func(c *Config) {
			c.Entries = append(c.Entries, EntryConfig{Name: "lan2", Local: "10.1.0.0/16", Remote: "10.2.0.0/16", Context: c.Entries[1].Context})
		}, []want{{"labels.entry[4]", `entry "lan2" has the same selector as entry "lan" (10.1.0.0/16 -> 10.2.0.0/16); merge their labels into one entry`}}},
		{"ambiguous overlap", func(c *Config) {
			c.Entries = append(c.Entries, EntryConfig{Name: "wide", Local: "10.1.0.0/25", Remote: "10.0.0.0/8", Context: spd})
			c.Entries = append(c.Entries, EntryConfig{Name: "wide2", Local: "10.0.0.0/8", Remote: "10.2.0.0/25", Context: spd})
		}, []want{{"labels.entry[5]", `entry "wide2" (10.0.0.0/8 -> 10.2.0.0/25) overlaps entry "wide" (10.1.0.0/25 -> 10.0.0.0/8) and is exactly as specific, so which one decides for their common traffic is ambiguous; make one narrower or split them so they do not overlap`}}},
		{"many at once", func(c *Config) {
			c.Mode = "x"
			c.Entries[0].Local = "x"
			c.Entries[1].Protocol = "x"
		}, []want{
			{"labels.mode", "unknown"},
			{"labels.entry[0].local", "not a CIDR"},
			{"labels.entry[1].protocol", "unknown"},
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := baseConfig()
			tc.edit(&c)
			ps := c.Validate()
			if len(ps) != len(tc.want) {
				t.Fatalf("got %d problems, want %d:\n%s", len(ps), len(tc.want), Problems(ps).Error())
			}
			for i, w := range tc.want {
				if ps[i].Path != w.path || !strings.Contains(ps[i].Msg, w.msg) {
					t.Errorf("problem %d:\n got %s\nwant %s: ...%s...", i, ps[i], w.path, w.msg)
				}
			}
			// New refuses the same config with the same problems.
			_, err := New(c, FixedDetector(false))
			var got Problems
			if !errors.As(err, &got) || len(got) != len(ps) {
				t.Errorf("New: %v, want the %d problems", err, len(ps))
			}
		})
	}
}

// TestModeHost: mode = "selinux" is refused where SELinux is inactive (charon
// would refuse label_mode selinux); Validate alone does not look at the host.
func TestModeHost(t *testing.T) {
	c := baseConfig()
	c.Mode = "selinux"
	if ps := c.Validate(); len(ps) != 0 {
		t.Fatalf("Validate looked at the host: %v", ps)
	}
	_, err := New(c, FixedDetector(false))
	var ps Problems
	if !errors.As(err, &ps) || len(ps) != 1 || ps[0].Path != "labels.mode" ||
		!strings.Contains(ps[0].Msg, `mode = "selinux" needs an active SELinux on this host`) {
		t.Fatalf("New: %v", err)
	}
	if !strings.HasPrefix(err.Error(), "labels: labels.mode: ") {
		t.Errorf("error text %q", err)
	}
	p, err := New(c, FixedDetector(true))
	if err != nil {
		t.Fatal(err)
	}
	if conf, eff := p.Mode(); conf != "selinux" || eff != "selinux" {
		t.Errorf("Mode() = %s, %s", conf, eff)
	}
	for _, tc := range []struct {
		mode   string
		active bool
		want   string
	}{{"", false, "simple"}, {"", true, "selinux"}, {"auto", true, "selinux"}, {"auto", false, "simple"}, {"simple", true, "simple"}} {
		c.Mode = tc.mode
		p, err := New(c, FixedDetector(tc.active))
		if err != nil {
			t.Fatal(err)
		}
		if _, eff := p.Mode(); eff != tc.want {
			t.Errorf("mode %q, SELinux active %v: effective %s, want %s", tc.mode, tc.active, eff, tc.want)
		}
	}
}

func TestHostDetector(t *testing.T) {
	dir := t.TempDir()
	if (HostDetector{Root: dir}).SELinuxActive() {
		t.Error("empty root has SELinux")
	}
	if err := mkfile(dir + "/sys/fs/selinux/enforce"); err != nil {
		t.Fatal(err)
	}
	if !(HostDetector{Root: dir}).SELinuxActive() {
		t.Error("enforce file not seen")
	}
}
