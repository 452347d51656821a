package authmethod

import (
	"fmt"
	"regexp"
	"slices"
)

// Config is [auth] in obold.toml: how OE peers' keys are found and trusted.
type Config struct {
	// Methods are asked in order; the first with an opinion decides.
	// Built in: "dns", "static", "leap-of-faith"; any other name is an
	// external plugin's ([[auth.plugin]], which obold's config owns, as it
	// owns every module plugin's settings). Default ["dns"].
	Methods     []string          `toml:"methods"`
	Static      StaticConfig      `toml:"static"`
	LeapOfFaith LeapOfFaithConfig `toml:"leap_of_faith"`
}

// StaticConfig is [auth.static].
type StaticConfig struct {
	Dir string `toml:"dir"`
}

// LeapOfFaithConfig is [auth.leap_of_faith].
type LeapOfFaithConfig struct {
	Store          string `toml:"store"`
	AllowKeyChange bool   `toml:"allow_key_change"`
}

// Built-in method names.
const (
	NameDNS         = "dns"
	NameStatic      = "static"
	NameLeapOfFaith = "leap-of-faith"
)

// WithDefaults fills what an absent key means.
func (c Config) WithDefaults() Config {
	if len(c.Methods) == 0 {
		c.Methods = []string{NameDNS}
	}
	if c.LeapOfFaith.Store == "" {
		c.LeapOfFaith.Store = "/var/lib/obol/leap-of-faith.json"
	}
	return c
}

// Problem is a config error at a key path ("auth.methods[1]").
type Problem struct{ Path, Msg string }

var pluginNameRE = regexp.MustCompile(`^[a-z][a-z0-9_-]{0,31}$`)

// Validate returns every problem; requireDNSSEC is [oe.dns] require_dnssec
// and pluginNames the names of the [[auth.plugin]] entries, in order.
func (c Config) Validate(requireDNSSEC bool, pluginNames []string) []Problem {
	c = c.WithDefaults()
	var ps []Problem
	plugins := map[string]bool{}
	for i, name := range pluginNames {
		path := fmt.Sprintf("auth.plugin[%d].name", i)
		switch {
		case !pluginNameRE.MatchString(name):
			ps = append(ps, Problem{path, fmt.Sprintf("name %q: write 1 to 32 lowercase letters, digits, '-' or '_', starting with a letter", name)})
		case name == NameDNS || name == NameStatic || name == NameLeapOfFaith:
			ps = append(ps, Problem{path, fmt.Sprintf("name %q is a built-in method; give the plugin another name", name)})
		case plugins[name]:
			ps = append(ps, Problem{path, fmt.Sprintf("name %q is used twice", name)})
		}
		plugins[name] = true
	}
	seen := map[string]bool{}
	for i, m := range c.Methods {
		path := fmt.Sprintf("auth.methods[%d]", i)
		if seen[m] {
			ps = append(ps, Problem{path, fmt.Sprintf("method %q is listed twice", m)})
		}
		seen[m] = true
		switch {
		case m == NameDNS:
		case m == NameStatic && c.Static.Dir == "":
			ps = append(ps, Problem{path, "method \"static\" needs [auth.static] dir = \"/etc/obol/keys\""})
		case m == NameStatic:
		case m == NameLeapOfFaith && requireDNSSEC:
			ps = append(ps, Problem{path, "leap-of-faith trusts keys from unvalidated DNS at first contact, which require_dnssec = true refuses; set [oe.dns] require_dnssec = false or drop the method"})
		case m == NameLeapOfFaith:
		case !plugins[m]:
			ps = append(ps, Problem{path, fmt.Sprintf("unknown method %q; write %q, %q, %q or the name of an [[auth.plugin]]", m, NameDNS, NameStatic, NameLeapOfFaith)})
		}
	}
	for i, name := range pluginNames {
		if !slices.Contains(c.Methods, name) {
			ps = append(ps, Problem{fmt.Sprintf("auth.plugin[%d]", i), fmt.Sprintf("plugin %q is not in auth.methods; list it there or remove it", name)})
		}
	}
	return ps
}
