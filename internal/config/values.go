package config

import (
	"fmt"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// Each value type checks itself in UnmarshalText: the TOML decoder then
// reports its error at the value's line.

// Duration is a Go duration written as a string ("10s", "1m30s").
type Duration time.Duration

func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil || v < 0 {
		return fmt.Errorf("%q is not a duration; write a string such as \"10s\" or \"1m30s\"", b)
	}
	*d = Duration(v)
	return nil
}

func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

// FileMode is a unix permission written in octal as a string ("0600").
type FileMode uint32

func (m *FileMode) UnmarshalText(b []byte) error {
	v, err := strconv.ParseUint(string(b), 8, 32)
	if err != nil || v > 0o777 {
		return fmt.Errorf("%q is not a permission; write an octal string such as \"0600\" or \"0660\"", b)
	}
	*m = FileMode(v)
	return nil
}

// enum checks s against the allowed words and says which exist.
func enum(s string, allowed ...string) error {
	for _, a := range allowed {
		if s == a {
			return nil
		}
	}
	return fmt.Errorf("%q is not allowed here; write one of %s", s, quoteList(allowed))
}

func quoteList(l []string) string {
	q := make([]string, len(l))
	for i, s := range l {
		q[i] = strconv.Quote(s)
	}
	return strings.Join(q, ", ")
}

// OnStop says what obold does with what it installed when it stops.
type OnStop string

const (
	OnStopRemove OnStop = "remove"
	OnStopLeave  OnStop = "leave"
)

func (o *OnStop) UnmarshalText(b []byte) error {
	if err := enum(string(b), string(OnStopRemove), string(OnStopLeave)); err != nil {
		return err
	}
	*o = OnStop(b)
	return nil
}

// LogLevel is slog's level by name.
type LogLevel string

func (l *LogLevel) UnmarshalText(b []byte) error {
	if err := enum(string(b), "debug", "info", "warn", "error"); err != nil {
		return err
	}
	*l = LogLevel(b)
	return nil
}

// LogFormat is text or json.
type LogFormat string

func (l *LogFormat) UnmarshalText(b []byte) error {
	if err := enum(string(b), "text", "json"); err != nil {
		return err
	}
	*l = LogFormat(b)
	return nil
}

// AuthMethod is how one side of a conn authenticates.
type AuthMethod string

func (a *AuthMethod) UnmarshalText(b []byte) error {
	if err := enum(string(b), "pubkey", "psk"); err != nil {
		return err
	}
	*a = AuthMethod(b)
	return nil
}

// ChildMode is a CHILD_SA mode.
type ChildMode string

func (m *ChildMode) UnmarshalText(b []byte) error {
	if err := enum(string(b), "tunnel", "transport"); err != nil {
		return err
	}
	*m = ChildMode(b)
	return nil
}

// StartAction is what charon does with a child when it is loaded.
type StartAction string

func (s *StartAction) UnmarshalText(b []byte) error {
	if err := enum(string(b), "none", "start", "trap"); err != nil {
		return err
	}
	*s = StartAction(b)
	return nil
}

// LabelMode is how charon matches security labels.
type LabelMode string

func (s *LabelMode) UnmarshalText(b []byte) error {
	if err := enum(string(b), "system", "simple", "selinux"); err != nil {
		return err
	}
	*s = LabelMode(b)
	return nil
}

// Name is a conn or child name: charon and swanctl take letters, digits, - and _.
type Name string

var nameRE = regexp.MustCompile(`^[A-Za-z0-9_-]{1,48}$`)

func (n *Name) UnmarshalText(b []byte) error {
	if !nameRE.Match(b) {
		return fmt.Errorf("%q is not a usable name; write 1 to 48 letters, digits, '-' or '_' (no dots: swanctl refuses them)", b)
	}
	*n = Name(b)
	return nil
}

// Addr is a host address or a DNS name for local_addrs/remote_addrs.
type Addr string

var hostnameRE = regexp.MustCompile(`^([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$`)

func (a *Addr) UnmarshalText(b []byte) error {
	s := string(b)
	if s == "%any" || hostnameRE.MatchString(s) {
		*a = Addr(s)
		return nil
	}
	if _, err := netip.ParseAddr(s); err == nil {
		*a = Addr(s)
		return nil
	}
	if _, err := netip.ParsePrefix(s); err == nil {
		*a = Addr(s)
		return nil
	}
	return fmt.Errorf("%q is not an address; write an IP address, a CIDR, a DNS name or \"%%any\"", s)
}

// TrafficSelector is a CIDR or address, optionally with [proto/port] as swanctl writes it.
type TrafficSelector string

var tsSuffixRE = regexp.MustCompile(`^\[([a-z0-9]*)(/([a-z0-9%-]*))?\]$`)

func (t *TrafficSelector) UnmarshalText(b []byte) error {
	s := string(b)
	base, suffix := s, ""
	if i := strings.IndexByte(s, '['); i >= 0 {
		base, suffix = s[:i], s[i:]
	}
	ok := base == "dynamic"
	if !ok {
		if _, err := netip.ParsePrefix(base); err == nil {
			ok = true
		} else if _, err := netip.ParseAddr(base); err == nil {
			ok = true
		}
	}
	if !ok || (suffix != "" && !tsSuffixRE.MatchString(suffix)) {
		return fmt.Errorf("%q is not a traffic selector; write a CIDR such as \"10.1.0.0/24\", an address, or \"dynamic\", optionally followed by [proto/port] such as \"[tcp/443]\"", s)
	}
	*t = TrafficSelector(s)
	return nil
}
