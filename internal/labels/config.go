package labels

import (
	"strings"
)

// TOMLKey is the table obold.toml keeps this config in; problem paths
// start with it.
const TOMLKey = "labels"

// Config is the [labels] table of obold.toml. The zero Config is valid: no
// entries, so no flow is covered and every flow is allowed unlabeled.
type Config struct {
	// Mode is how charon matches labels of SELinux entries: "simple"
	// (charon negotiates exactly the listed labels), "selinux" (charon puts
	// the entry's context on its trap policies and the kernel's
	// association:polmatch picks the data label; needs an active SELinux)
	// or "auto" (selinux when SELinux is active on the host, else simple).
	// "" means "auto". Smack and opaque entries always use simple.
	Mode string `toml:"mode"`
	// Allow are the type-enforcement rules for SELinux entries, each
	// standing for "allow SOURCE TARGET:association polmatch".
	Allow []AllowRule `toml:"allow"`
	// Entries are the labeled SPD entries, one per traffic selector.
	Entries []EntryConfig `toml:"entry"`
}

// AllowRule lets data of SELinux type Source use SPD entries whose context
// has type Target.
type AllowRule struct {
	// Source is the data's type, e.g. "httpd_t".
	Source string `toml:"source"`
	// Target is the SPD entry's type, e.g. "ipsec_spd_t".
	Target string `toml:"target"`
}

// EntryConfig is one SPD entry: a traffic selector with the labels that
// may use it. The most specific entry covering a flow decides for it.
type EntryConfig struct {
	// Name identifies the entry in reasons and names its CHILD_SAs: 1 to 32
	// letters, digits, '-' or '_'. Unique.
	Name string `toml:"name"`
	// Local is the local side's CIDR, e.g. "10.1.0.0/24".
	Local string `toml:"local"`
	// Remote is the remote side's CIDR, same address family as Local.
	Remote string `toml:"remote"`
	// Protocol is "any" (or ""), "tcp", "udp", "icmp", "icmpv6", "sctp" or
	// an IP protocol number.
	Protocol string `toml:"protocol"`
	// LocalPorts is "" (any), one port "443" or a range "1000-2000";
	// tcp, udp and sctp only.
	LocalPorts string `toml:"local_ports"`
	// RemotePorts is like LocalPorts for the remote side.
	RemotePorts string `toml:"remote_ports"`
	// Required says SAs for this selector must be labeled: unlabeled flows
	// are refused. It needs at least one label.
	Required bool `toml:"required"`
	// Context is the SELinux entry's own context: TE and MLS decide which
	// data labels may use the entry against it. It labels the entry, not
	// the SA, and is never copied into an SA (except as charon's generic
	// trap-policy context in selinux mode, which is what it is for).
	// Required for doi "selinux"; not used by smack or opaque entries.
	Context string `toml:"context"`
	// Labels are the data labels obold negotiates SAs for on this entry,
	// one CHILD_SA each. For selinux, each must pass the entry's TE and MLS
	// checks; for smack and opaque they are the only labels allowed.
	Labels []string `toml:"labels"`
	// DOI is how Context and Labels are read: "selinux" (default),
	// "smack" or "opaque".
	DOI string `toml:"doi"`
}

// Problem is one thing wrong with a Config, at a key path such as
// "labels.entry[2].context". Msg says what is wrong and what to write.
type Problem struct {
	Path string
	Msg  string
}

func (p Problem) String() string { return p.Path + ": " + p.Msg }

// Problems is every problem of a Config, as an error.
type Problems []Problem

func (ps Problems) Error() string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.String()
	}
	return "labels: " + strings.Join(s, "\n")
}

// Validate checks everything that does not depend on the host: syntax of
// every value, and every contradiction (duplicate names or selectors,
// labels the entry itself would refuse, required entries without labels,
// labels of another DOI). New adds the host check of mode = "selinux".
func (c Config) Validate() []Problem {
	_, ps := compile(c, nil)
	return ps
}

// Empty says the config has no entries: obold can leave the module off.
func (c Config) Empty() bool { return len(c.Entries) == 0 }
