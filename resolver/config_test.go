package resolver

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/BurntSushi/toml"
)

func TestConfigTOML(t *testing.T) {
	doc := `
[resolver]
server = "192.0.2.53:53"
timeout = "3s"
retransmit = "500ms"
require_dnssec = true
cache_entries = 500
cache_bytes = 1048576
min_ttl = "5s"
max_ttl = "30m"
max_negative_ttl = "2m"
bogus_ttl = "10s"
max_in_flight = 16
`
	var file struct {
		Resolver Config `toml:"resolver"`
	}
	file.Resolver = Defaults()
	md, err := toml.Decode(doc, &file)
	if err != nil {
		t.Fatal(err)
	}
	if u := md.Undecoded(); len(u) > 0 {
		t.Fatalf("keys without a field: %v", u)
	}
	want := Config{
		Server: "192.0.2.53:53", Timeout: Duration(3 * time.Second), Retransmit: Duration(500 * time.Millisecond),
		RequireDNSSEC: true, CacheEntries: 500, CacheBytes: 1 << 20,
		MinTTL: Duration(5 * time.Second), MaxTTL: Duration(30 * time.Minute), MaxNegativeTTL: Duration(2 * time.Minute),
		BogusTTL: Duration(10 * time.Second), MaxInFlight: 16,
	}
	if file.Resolver != want {
		t.Errorf("decoded %+v\nwant    %+v", file.Resolver, want)
	}
	if err := file.Resolver.Validate(); err != nil {
		t.Error(err)
	}
	// Round trip through the encoder.
	var b strings.Builder
	if err := toml.NewEncoder(&b).Encode(file); err != nil {
		t.Fatal(err)
	}
	var again struct {
		Resolver Config `toml:"resolver"`
	}
	if _, err := toml.Decode(b.String(), &again); err != nil || again.Resolver != want {
		t.Errorf("round trip: %v\n%s", err, b.String())
	}

	if _, err := toml.Decode("[resolver]\ntimeout = \"soon\"\n", &file); err == nil || !strings.Contains(err.Error(), `"soon" is not a duration`) {
		t.Errorf("bad duration: %v", err)
	}
}

func TestConfigValidate(t *testing.T) {
	if err := Defaults().Validate(); err != nil {
		t.Fatalf("defaults: %v", err)
	}
	cases := []struct {
		name string
		mod  func(*Config)
		want string
	}{
		{"no server", func(c *Config) { c.Server = "" }, "resolver.server: empty"},
		{"host name", func(c *Config) { c.Server = "localhost:53" }, "no host names"},
		{"port 0", func(c *Config) { c.Server = "127.0.0.1:0" }, "port 0"},
		{"zero timeout", func(c *Config) { c.Timeout = 0 }, "resolver.timeout"},
		{"zero retransmit", func(c *Config) { c.Retransmit = 0 }, "resolver.retransmit"},
		{"negative cache", func(c *Config) { c.CacheEntries = -1 }, "resolver.cache_entries"},
		{"tiny cache bytes", func(c *Config) { c.CacheBytes = 100 }, "resolver.cache_bytes"},
		{"negative min_ttl", func(c *Config) { c.MinTTL = -1 }, "resolver.min_ttl"},
		{"max below min", func(c *Config) { c.MaxTTL = Duration(time.Second) }, "resolver.max_ttl"},
		{"negative max below min", func(c *Config) { c.MaxNegativeTTL = Duration(time.Second) }, "resolver.max_negative_ttl"},
		{"zero bogus_ttl", func(c *Config) { c.BogusTTL = 0 }, "resolver.bogus_ttl"},
		{"zero max_in_flight", func(c *Config) { c.MaxInFlight = 0 }, "resolver.max_in_flight"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := Defaults()
			tc.mod(&c)
			err := c.Validate()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Validate = %v, want an error mentioning %q", err, tc.want)
			}
			if _, err := New(c, Options{}); err == nil {
				t.Error("New accepted the config")
			}
		})
	}
	// Every problem at once.
	c := Defaults()
	c.Server, c.Timeout, c.MaxInFlight = "", 0, 0
	if err := c.Validate(); err == nil || strings.Count(err.Error(), "resolver.") != 3 {
		t.Errorf("Validate reports %v, want three problems", err)
	}
}

func TestServerAddr(t *testing.T) {
	for in, want := range map[string]string{
		"127.0.0.1:53":        "127.0.0.1:53",
		"192.0.2.53":          "192.0.2.53:53",
		"[::1]:5353":          "[::1]:5353",
		"::1":                 "[::1]:53",
		"[::ffff:1.2.3.4]:53": "1.2.3.4:53",
	} {
		got, err := ServerAddr(in)
		if err != nil || got != netip.MustParseAddrPort(want) {
			t.Errorf("ServerAddr(%q) = %v, %v; want %s", in, got, err, want)
		}
	}
}
