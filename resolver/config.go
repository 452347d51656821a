package resolver

import (
	"errors"
	"fmt"
	"net/netip"
	"time"
)

// Config is the resolver's part of obold's TOML configuration (the
// [resolver] table). Start from Defaults: a zero value is not valid.
type Config struct {
	// Server is the trusted validating resolver obold asks, as "IP:port" or
	// a bare IP (port 53). It must validate DNSSEC (e.g. unbound with
	// module-config "validator iterator") and be reached over a trusted path:
	// obold believes its AD bit. Default "127.0.0.1:53".
	Server string `toml:"server"`
	// Timeout bounds one lookup, all its DNS queries included, when the
	// caller's context has no earlier deadline. Default "5s".
	Timeout Duration `toml:"timeout"`
	// Retransmit is how long to wait for a UDP answer before sending the
	// query again (the wait doubles each time, up to Timeout). Default "1s".
	Retransmit Duration `toml:"retransmit"`
	// RequireDNSSEC makes answers that are not DNSSEC-validated ("insecure")
	// unusable: they come back with their status and a reason, never as
	// gateways. "bogus" answers are never usable. Default false.
	RequireDNSSEC bool `toml:"require_dnssec"`
	// CacheEntries bounds the number of cached DNS answers (one per name and
	// record type); the least recently used go first. 0 disables the cache
	// (concurrent identical queries are still shared). Default 10000.
	CacheEntries int `toml:"cache_entries"`
	// CacheBytes bounds the cache's estimated memory (record data, names,
	// reasons and bookkeeping), whatever the number of entries. Default
	// 8388608 (8 MiB).
	CacheBytes int `toml:"cache_bytes"`
	// MinTTL is the shortest time an answer is cached, whatever its TTL
	// (also for negative answers). Default "10s".
	MinTTL Duration `toml:"min_ttl"`
	// MaxTTL is the longest time a positive answer is cached, whatever its
	// TTL. Default "1h".
	MaxTTL Duration `toml:"max_ttl"`
	// MaxNegativeTTL is the longest time a negative answer (NXDOMAIN or no
	// record of the type) is cached; its TTL comes from the zone's SOA
	// (RFC 2308). Default "5m".
	MaxNegativeTTL Duration `toml:"max_negative_ttl"`
	// BogusTTL is how long a "bogus" verdict (DNSSEC validation failed) is
	// cached; such answers carry no TTL of their own. Default "30s".
	BogusTTL Duration `toml:"bogus_ttl"`
	// MaxInFlight bounds the DNS queries outstanding at once; more wait
	// (within their deadline) for a slot. Default 64.
	MaxInFlight int `toml:"max_in_flight"`
}

// Defaults returns the configuration used when [resolver] sets nothing.
func Defaults() Config {
	return Config{
		Server:         "127.0.0.1:53",
		Timeout:        Duration(5 * time.Second),
		Retransmit:     Duration(time.Second),
		CacheEntries:   10000,
		CacheBytes:     8 << 20,
		MinTTL:         Duration(10 * time.Second),
		MaxTTL:         Duration(time.Hour),
		MaxNegativeTTL: Duration(5 * time.Minute),
		BogusTTL:       Duration(30 * time.Second),
		MaxInFlight:    64,
	}
}

// Validate reports every invalid field at once (errors.Join), each naming
// its TOML key and what to write instead.
func (c Config) Validate() error {
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("resolver.%s: %s", key, fmt.Sprintf(format, args...)))
	}
	if _, err := ServerAddr(c.Server); err != nil {
		bad("server", "%v", err)
	}
	if c.Timeout <= 0 {
		bad("timeout", "must be positive; write e.g. \"5s\"")
	}
	if c.Retransmit <= 0 {
		bad("retransmit", "must be positive; write e.g. \"1s\"")
	}
	if c.CacheEntries < 0 {
		bad("cache_entries", "%d is negative; write 0 to disable the cache or e.g. 10000", c.CacheEntries)
	}
	if c.CacheBytes < 0 || (c.CacheEntries > 0 && c.CacheBytes < 4096) {
		bad("cache_bytes", "%d is too small; write at least 4096 (e.g. 8388608 for 8 MiB)", c.CacheBytes)
	}
	if c.MinTTL < 0 {
		bad("min_ttl", "must not be negative; write e.g. \"10s\" or \"0s\"")
	}
	if c.MaxTTL <= 0 || c.MaxTTL < c.MinTTL {
		bad("max_ttl", "must be positive and at least min_ttl (%v); write e.g. \"1h\"", time.Duration(c.MinTTL))
	}
	if c.MaxNegativeTTL <= 0 || c.MaxNegativeTTL < c.MinTTL {
		bad("max_negative_ttl", "must be positive and at least min_ttl (%v); write e.g. \"5m\"", time.Duration(c.MinTTL))
	}
	if c.BogusTTL <= 0 {
		bad("bogus_ttl", "must be positive; write e.g. \"30s\"")
	}
	if c.MaxInFlight <= 0 {
		bad("max_in_flight", "%d is not positive; write e.g. 64", c.MaxInFlight)
	}
	return errors.Join(errs...)
}

// ServerAddr parses a Config.Server value: "IP:port", "[IPv6]:port" or a
// bare IP meaning port 53. Names are refused: finding the resolver must not
// need DNS.
func ServerAddr(s string) (netip.AddrPort, error) {
	if s == "" {
		return netip.AddrPort{}, errors.New("empty; write the validating resolver's address, e.g. \"127.0.0.1:53\"")
	}
	if ap, err := netip.ParseAddrPort(s); err == nil {
		if ap.Port() == 0 {
			return netip.AddrPort{}, fmt.Errorf("%q has port 0; write e.g. \"127.0.0.1:53\"", s)
		}
		if ap.Addr().Zone() != "" {
			return netip.AddrPort{}, fmt.Errorf("%q has an IPv6 zone; give a global or loopback address", s)
		}
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), nil
	}
	if a, err := netip.ParseAddr(s); err == nil && a.Zone() == "" {
		return netip.AddrPortFrom(a.Unmap(), 53), nil
	}
	return netip.AddrPort{}, fmt.Errorf("%q is not an IP address with an optional port; write e.g. \"127.0.0.1:53\" or \"[::1]:53\" (no host names)", s)
}

// Duration is a time.Duration written in TOML as a string ("5s", "1m30s").
type Duration time.Duration

// UnmarshalText parses a Go duration string; negative values are refused.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil || v < 0 {
		return fmt.Errorf("%q is not a duration; write a string such as \"5s\" or \"1m30s\"", b)
	}
	*d = Duration(v)
	return nil
}

// MarshalText writes the duration as time.Duration.String does.
func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

// String is time.Duration's.
func (d Duration) String() string { return time.Duration(d).String() }
