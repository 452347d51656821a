package vici

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	govici "github.com/strongswan/govici/vici"
)

// VICI encodes key lengths in one byte and values in two.
const (
	maxKey   = 255
	maxValue = 65535
)

// builder fills one section in a fixed order (govici keeps insertion
// order; Go maps would not) and keeps the first error.
type builder struct {
	where string
	m     *govici.Message
	err   error
}

func newBuilder(where string) *builder {
	return &builder{where: where, m: govici.NewMessage()}
}

func (b *builder) fail(format string, args ...any) {
	if b.err == nil {
		b.err = fmt.Errorf("vici: %s: %s", b.where, fmt.Sprintf(format, args...))
	}
}

func (b *builder) set(key string, v any) {
	if b.err != nil {
		return
	}
	if err := b.m.Set(key, v); err != nil {
		b.fail("%s: %v", key, err)
	}
}

// str sets a value unless it is empty.
func (b *builder) str(key, v string) {
	if v == "" {
		return
	}
	if len(v) > maxValue {
		b.fail("%s: %d bytes is longer than the %d VICI allows", key, len(v), maxValue)
		return
	}
	b.set(key, v)
}

func (b *builder) list(key string, v []string) {
	if len(v) == 0 {
		return
	}
	for i, s := range v {
		if len(s) > maxValue {
			b.fail("%s[%d]: %d bytes is longer than the %d VICI allows", key, i, len(s), maxValue)
			return
		}
	}
	b.set(key, v)
}

// blobs sets binary items; govici cannot marshal []byte, strings carry bytes fine.
func (b *builder) blobs(key string, v [][]byte) {
	l := make([]string, 0, len(v))
	for i, d := range v {
		if len(d) == 0 {
			b.fail("%s[%d] is empty: give the PEM or DER data", key, i)
			return
		}
		l = append(l, string(d))
	}
	b.list(key, l)
}

func (b *builder) yes(key string, v bool) {
	if v {
		b.set(key, "yes")
	}
}

func (b *builder) uint(key string, v uint64) {
	if v != 0 {
		b.set(key, strconv.FormatUint(v, 10))
	}
}

// secs sets a duration as whole seconds ("30s"), rounding up so that a
// positive sub-second value does not turn into 0 (which often means "off").
func (b *builder) secs(key string, d time.Duration) {
	switch {
	case d < 0:
		b.fail("%s: negative duration %s", key, d)
	case d > 0:
		b.set(key, strconv.FormatInt(int64((d+time.Second-1)/time.Second), 10)+"s")
	}
}

func (b *builder) section(key string, sub *builder) {
	if sub.err != nil {
		if b.err == nil {
			b.err = sub.err
		}
		return
	}
	b.set(key, sub.m)
}

func checkName(what, name string) error {
	switch {
	case name == "":
		return fmt.Errorf("vici: load-conn: %s has no name: give it one", what)
	case len(name) > maxKey:
		return fmt.Errorf("vici: load-conn: %s name %.20q... is %d bytes, VICI allows %d", what, name, len(name), maxKey)
	case strings.ContainsAny(name, " \t\r\n"):
		return fmt.Errorf("vici: load-conn: %s name %q contains white space: swanctl could not name it", what, name)
	}
	return nil
}

// marshalConn builds the load-conn message for c:
//
//	{ <c.Name> = { version, local_addrs, ..., local-1 = {round = 1, ...},
//	  remote-1 = {...}, children = { <child> = {...} } } }
//
// Auth rounds carry an explicit round so their order does not depend on
// how charon enumerates sections.
func marshalConn(c Conn) (*govici.Message, error) {
	if err := checkName("conn", c.Name); err != nil {
		return nil, err
	}
	if c.Version < 0 || c.Version > 2 {
		return nil, fmt.Errorf("vici: load-conn %q: version %d: use 1, 2 or 0 (any)", c.Name, c.Version)
	}
	b := newBuilder("load-conn " + strconv.Quote(c.Name))
	if c.Version != 0 {
		b.set("version", strconv.Itoa(c.Version))
	}
	b.list("local_addrs", c.LocalAddrs)
	b.list("remote_addrs", c.RemoteAddrs)
	b.uint("local_port", uint64(c.LocalPort))
	b.uint("remote_port", uint64(c.RemotePort))
	b.list("proposals", c.Proposals)
	b.yes("encap", c.Encap)
	if c.Mobike != nil {
		b.set("mobike", yesNo(*c.Mobike))
	}
	b.secs("dpd_delay", c.DPDDelay)
	b.secs("rekey_time", c.RekeyTime)
	b.secs("reauth_time", c.ReauthTime)
	b.secs("over_time", c.OverTime)
	b.str("unique", c.Unique)
	if c.KeyingTries < 0 {
		b.fail("keyingtries: %d is negative (0 keeps charon's default)", c.KeyingTries)
	}
	b.uint("keyingtries", uint64(max(c.KeyingTries, 0)))
	addAuth(b, "local", c.Local)
	addAuth(b, "remote", c.Remote)
	if len(c.Children) > 0 {
		ch := newBuilder(b.where + ": children")
		seen := make(map[string]bool)
		for _, child := range c.Children {
			if err := checkName("child of conn "+strconv.Quote(c.Name), child.Name); err != nil {
				return nil, err
			}
			if seen[child.Name] {
				return nil, fmt.Errorf("vici: load-conn %q: child %q appears twice: children need distinct names", c.Name, child.Name)
			}
			seen[child.Name] = true
			ch.section(child.Name, marshalChild(b.where+": child "+strconv.Quote(child.Name), child))
		}
		b.section("children", ch)
	}
	if b.err != nil {
		return nil, b.err
	}
	msg := govici.NewMessage()
	if err := msg.Set(c.Name, b.m); err != nil {
		return nil, fmt.Errorf("vici: load-conn %q: %w", c.Name, err)
	}
	return msg, nil
}

func addAuth(b *builder, side string, rounds []Auth) {
	for i, a := range rounds {
		key := fmt.Sprintf("%s-%d", side, i+1)
		s := newBuilder(b.where + ": " + key)
		s.str("auth", a.Auth)
		s.str("id", a.ID)
		s.str("eap_id", a.EAPID)
		s.list("groups", a.Groups)
		s.list("cert_policy", a.CertPolicy)
		s.str("revocation", a.RevocationPolicy)
		s.blobs("certs", a.Certs)
		s.blobs("cacerts", a.CACerts)
		s.blobs("pubkeys", a.Pubkeys)
		s.set("round", strconv.Itoa(i+1))
		b.section(key, s)
	}
}

func marshalChild(where string, c Child) *builder {
	b := newBuilder(where)
	b.str("mode", c.Mode)
	b.list("local_ts", c.LocalTS)
	b.list("remote_ts", c.RemoteTS)
	b.list("esp_proposals", c.ESPProposals)
	b.str("start_action", c.StartAction)
	b.str("close_action", c.CloseAction)
	b.str("dpd_action", c.DPDAction)
	b.secs("inactivity", c.Inactivity)
	b.secs("rekey_time", c.RekeyTime)
	b.secs("life_time", c.LifeTime)
	b.yes("ipcomp", c.IPComp)
	b.str("label", c.Label)
	b.str("label_mode", c.LabelMode)
	b.str("updown", c.Updown)
	b.uint("priority", uint64(c.Priority))
	return b
}

func yesNo(v bool) string {
	if v {
		return "yes"
	}
	return "no"
}
