package vici

import (
	"encoding/hex"
	"fmt"
	"math"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	govici "github.com/strongswan/govici/vici"
)

// The decoders below are pure functions of *govici.Message so they can be
// tested and fuzzed without charon. Missing fields leave zero values (charon
// omits what does not apply); present but unusable ones are errors naming
// the message, the SA and the field. They never panic.

// fields reads typed values out of one section and keeps the first error.
type fields struct {
	where string
	m     *govici.Message
	err   error
}

func (f *fields) fail(field, format string, args ...any) {
	if f.err == nil {
		f.err = malformed(f.where, field, format, args...)
	}
}

func kindOf(v any) string {
	switch v.(type) {
	case string:
		return "a value"
	case []string:
		return "a list"
	case *govici.Message:
		return "a section"
	}
	return fmt.Sprintf("%T", v)
}

// str returns the value of key, "" if missing.
func (f *fields) str(key string) string {
	switch v := f.m.Get(key).(type) {
	case nil:
		return ""
	case string:
		return v
	default:
		f.fail(key, "expected a value, got %s", kindOf(v))
		return ""
	}
}

func (f *fields) list(key string) []string {
	switch v := f.m.Get(key).(type) {
	case nil:
		return nil
	case []string:
		return slices.Clone(v)
	default:
		f.fail(key, "expected a list, got %s", kindOf(v))
		return nil
	}
}

func (f *fields) section(key string) *govici.Message {
	switch v := f.m.Get(key).(type) {
	case nil:
		return nil
	case *govici.Message:
		return v
	default:
		f.fail(key, "expected a section, got %s", kindOf(v))
		return nil
	}
}

func (f *fields) uint(key string, bits int) uint64 {
	s := f.str(key)
	if s == "" {
		return 0
	}
	n, err := strconv.ParseUint(s, 10, bits)
	if err != nil {
		f.fail(key, "%q is not a number", s)
	}
	return n
}

func (f *fields) int(key string, bits int) int64 {
	s := f.str(key)
	if s == "" {
		return 0
	}
	n, err := strconv.ParseInt(s, 10, bits)
	if err != nil {
		f.fail(key, "%q is not a number", s)
	}
	return n
}

// secs reads a count of seconds; def is returned when key is missing.
func (f *fields) secs(key string, def time.Duration) time.Duration {
	s := f.str(key)
	if s == "" {
		return def
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		f.fail(key, "%q is not a number of seconds", s)
		return def
	}
	if n > math.MaxInt64/int64(time.Second) || n < math.MinInt64/int64(time.Second) {
		f.fail(key, "%q seconds is out of range", s)
		return def
	}
	return time.Duration(n) * time.Second
}

// flag reads charon's booleans: "yes" (or "1" for esn); missing is false.
func (f *fields) flag(key string) bool {
	switch s := f.str(key); s {
	case "", "no", "0", "false":
		return false
	case "yes", "1", "true":
		return true
	default:
		f.fail(key, "%q is not yes or no", s)
		return false
	}
}

// addr reads a host address; charon's "%any"/"%any6" mean none yet.
func (f *fields) addr(key string) netip.Addr {
	s := f.str(key)
	if s == "" || s == "%any" || s == "%any6" {
		return netip.Addr{}
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		f.fail(key, "%q is not an IP address", s)
	}
	return a
}

// label decodes a hex security label and drops the trailing NUL charon keeps.
func (f *fields) label(key string) string {
	s := f.str(key)
	if s == "" {
		return ""
	}
	b, err := hex.DecodeString(s)
	if err != nil {
		f.fail(key, "%q is not hex", s)
		return ""
	}
	return strings.TrimSuffix(string(b), "\x00")
}

// decodeListSA decodes one list-sa event (or an updown event stripped of
// "up"): one section per IKE_SA, keyed by its conn name.
func decodeListSA(m *govici.Message) ([]IKESA, error) {
	return decodeIKESections("list-sas", m)
}

func decodeIKESections(cmd string, m *govici.Message) ([]IKESA, error) {
	if m == nil {
		return nil, nil
	}
	var out []IKESA
	for _, name := range m.Keys() {
		sec, ok := m.Get(name).(*govici.Message)
		if !ok {
			return nil, malformed(cmd, name, "expected an IKE_SA section, got %s", kindOf(m.Get(name)))
		}
		sa, err := decodeIKE(cmd, name, sec, true)
		if err != nil {
			return nil, err
		}
		out = append(out, sa)
	}
	return out, nil
}

// decodeIKE decodes the IKE_SA section sec of the conn name. With children,
// child-sas holds CHILD_SA sections keyed "<name>-<uniqueid>".
func decodeIKE(cmd, name string, sec *govici.Message, children bool) (IKESA, error) {
	f := &fields{where: cmd + ": IKE_SA " + name, m: sec}
	sa := IKESA{Name: name}
	sa.UniqueID = uint32(f.uint("uniqueid", 32))
	if f.err != nil {
		return IKESA{}, f.err
	}
	f.where += " #" + strconv.FormatUint(uint64(sa.UniqueID), 10)
	sa.Version = int(f.uint("version", 8))
	sa.State = f.str("state")
	sa.LocalHost = f.addr("local-host")
	sa.LocalPort = uint16(f.uint("local-port", 16))
	sa.LocalID = f.str("local-id")
	sa.RemoteHost = f.addr("remote-host")
	sa.RemotePort = uint16(f.uint("remote-port", 16))
	sa.RemoteID = f.str("remote-id")
	sa.RemoteEAPID = f.str("remote-eap-id")
	sa.RemoteXAuthID = f.str("remote-xauth-id")
	sa.Initiator = f.flag("initiator")
	sa.InitiatorSPI = f.str("initiator-spi")
	sa.ResponderSPI = f.str("responder-spi")
	sa.NATLocal = f.flag("nat-local")
	sa.NATRemote = f.flag("nat-remote")
	sa.NATFake = f.flag("nat-fake")
	sa.NATAny = f.flag("nat-any")
	sa.EncrAlg = f.str("encr-alg")
	sa.EncrKeySize = int(f.uint("encr-keysize", 16))
	sa.IntegAlg = f.str("integ-alg")
	sa.IntegKeySize = int(f.uint("integ-keysize", 16))
	sa.PRFAlg = f.str("prf-alg")
	sa.DHGroup = f.str("dh-group")
	sa.Established = f.secs("established", 0)
	sa.RekeyIn = f.secs("rekey-time", 0)
	sa.ReauthIn = f.secs("reauth-time", 0)
	sa.LocalVIPs = f.list("local-vips")
	sa.RemoteVIPs = f.list("remote-vips")
	if f.err != nil {
		return IKESA{}, f.err
	}
	if !children {
		return sa, nil
	}
	cs := f.section("child-sas")
	if f.err != nil {
		return IKESA{}, f.err
	}
	if cs == nil {
		return sa, nil
	}
	for _, key := range cs.Keys() {
		csec, ok := cs.Get(key).(*govici.Message)
		if !ok {
			return IKESA{}, malformed(f.where, "child-sas: "+key, "expected a CHILD_SA section, got %s", kindOf(cs.Get(key)))
		}
		c, err := decodeChild(f.where, key, csec)
		if err != nil {
			return IKESA{}, err
		}
		sa.Children = append(sa.Children, c)
	}
	return sa, nil
}

// decodeChild decodes one CHILD_SA section; key is its section name, used
// for the name only if the section lacks "name".
func decodeChild(where, key string, sec *govici.Message) (ChildSA, error) {
	f := &fields{where: where + ": child " + key, m: sec}
	c := ChildSA{Name: f.str("name")}
	c.UniqueID = uint32(f.uint("uniqueid", 32))
	if f.err != nil {
		return ChildSA{}, f.err
	}
	if c.Name == "" {
		// list-sas keys children "<name>-<uniqueid>".
		c.Name = strings.TrimSuffix(key, "-"+strconv.FormatUint(uint64(c.UniqueID), 10))
	}
	f.where = fmt.Sprintf("%s: child %s #%d", where, c.Name, c.UniqueID)
	c.ReqID = uint32(f.uint("reqid", 32))
	c.State = f.str("state")
	c.Mode = f.str("mode")
	c.Protocol = f.str("protocol")
	c.Encap = f.flag("encap")
	c.SPIIn = f.str("spi-in")
	c.SPIOut = f.str("spi-out")
	c.CPIIn = f.str("cpi-in")
	c.CPIOut = f.str("cpi-out")
	c.EncrAlg = f.str("encr-alg")
	c.EncrKeySize = int(f.uint("encr-keysize", 16))
	c.IntegAlg = f.str("integ-alg")
	c.IntegKeySize = int(f.uint("integ-keysize", 16))
	c.PRFAlg = f.str("prf-alg")
	c.DHGroup = f.str("dh-group")
	c.ESN = f.flag("esn")
	c.Label = f.label("label")
	c.BytesIn = f.uint("bytes-in", 64)
	c.PacketsIn = f.uint("packets-in", 64)
	c.BytesOut = f.uint("bytes-out", 64)
	c.PacketsOut = f.uint("packets-out", 64)
	c.UseIn = f.secs("use-in", -1) // missing: never used
	c.UseOut = f.secs("use-out", -1)
	c.RekeyIn = f.secs("rekey-time", 0)
	c.LifeIn = f.secs("life-time", 0)
	c.InstallTime = f.secs("install-time", 0)
	c.LocalTS = f.list("local-ts")
	c.RemoteTS = f.list("remote-ts")
	if f.err != nil {
		return ChildSA{}, f.err
	}
	return c, nil
}

// decodeListConn decodes one list-conn event: one section per conn.
func decodeListConn(m *govici.Message) ([]ConnInfo, error) {
	if m == nil {
		return nil, nil
	}
	var out []ConnInfo
	for _, name := range m.Keys() {
		sec, ok := m.Get(name).(*govici.Message)
		if !ok {
			return nil, malformed("list-conns", name, "expected a conn section, got %s", kindOf(m.Get(name)))
		}
		c, err := decodeConn(name, sec)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, nil
}

func decodeConn(name string, sec *govici.Message) (ConnInfo, error) {
	f := &fields{where: "list-conns: conn " + name, m: sec}
	c := ConnInfo{Name: name}
	c.LocalAddrs = f.list("local_addrs")
	c.RemoteAddrs = f.list("remote_addrs")
	c.Version = f.str("version")
	c.ReauthTime = f.secs("reauth_time", 0)
	c.RekeyTime = f.secs("rekey_time", 0)
	c.Unique = f.str("unique")
	c.DPDDelay = f.secs("dpd_delay", 0)
	if f.err != nil {
		return ConnInfo{}, f.err
	}
	// Auth rounds come as local-1, local-2, ... in order; sort anyway.
	type round struct {
		n int
		a AuthInfo
	}
	var local, remote []round
	for _, key := range sec.Keys() {
		side, num, ok := strings.Cut(key, "-")
		if !ok || (side != "local" && side != "remote") {
			continue
		}
		n, err := strconv.Atoi(num)
		if err != nil {
			continue
		}
		as := f.section(key)
		if f.err != nil {
			return ConnInfo{}, f.err
		}
		a, err := decodeAuth(f.where+": "+key, as)
		if err != nil {
			return ConnInfo{}, err
		}
		if side == "local" {
			local = append(local, round{n, a})
		} else {
			remote = append(remote, round{n, a})
		}
	}
	byRound := func(x, y round) int { return x.n - y.n }
	slices.SortStableFunc(local, byRound)
	slices.SortStableFunc(remote, byRound)
	for _, r := range local {
		c.Local = append(c.Local, r.a)
	}
	for _, r := range remote {
		c.Remote = append(c.Remote, r.a)
	}
	children := f.section("children")
	if f.err != nil {
		return ConnInfo{}, f.err
	}
	if children != nil {
		for _, cn := range children.Keys() {
			cs, ok := children.Get(cn).(*govici.Message)
			if !ok {
				return ConnInfo{}, malformed(f.where, "children: "+cn, "expected a child section, got %s", kindOf(children.Get(cn)))
			}
			cf := &fields{where: f.where + ": child " + cn, m: cs}
			ch := ChildInfo{
				Name:        cn,
				Mode:        cf.str("mode"),
				Label:       cf.label("label"),
				LocalTS:     cf.list("local-ts"),
				RemoteTS:    cf.list("remote-ts"),
				StartAction: cf.str("start_action"),
				DPDAction:   cf.str("dpd_action"),
				CloseAction: cf.str("close_action"),
				RekeyTime:   cf.secs("rekey_time", 0),
				Priority:    uint32(cf.uint("priority", 32)),
				Interface:   cf.str("interface"),
			}
			if cf.err != nil {
				return ConnInfo{}, cf.err
			}
			c.Children = append(c.Children, ch)
		}
	}
	return c, nil
}

func decodeAuth(where string, sec *govici.Message) (AuthInfo, error) {
	f := &fields{where: where, m: sec}
	a := AuthInfo{
		Class:      f.str("class"),
		ID:         f.str("id"),
		EAPID:      f.str("eap_id"),
		Revocation: f.str("revocation"),
		Groups:     f.list("groups"),
		CertPolicy: f.list("cert_policy"),
		Certs:      f.list("certs"),
		CACerts:    f.list("cacerts"),
	}
	return a, f.err
}

// decodeVersion decodes the answer to "version".
func decodeVersion(m *govici.Message) (Version, error) {
	f := &fields{where: "version", m: orEmpty(m)}
	v := Version{
		Daemon:  f.str("daemon"),
		Version: f.str("version"),
		Sysname: f.str("sysname"),
		Release: f.str("release"),
		Machine: f.str("machine"),
	}
	return v, f.err
}

// statsSince is the layout of charon's %T time format (local time).
const statsSince = "Jan 02 15:04:05 2006"

// decodeStats decodes the answer to "stats". charon 5.9.8 sends
// uptime{running, since}, workers{total, idle, active{...}}, queues{...},
// scheduled, ikesas{total, half-open}, plugins[] (and mem/mallinfo).
func decodeStats(m *govici.Message) (Stats, error) {
	f := &fields{where: "stats", m: orEmpty(m)}
	var st Stats
	if up := f.section("uptime"); up != nil {
		uf := &fields{where: "stats: uptime", m: up}
		st.Uptime = parseRunning(uf, "running")
		if s := uf.str("since"); s != "" {
			t, err := time.ParseInLocation(statsSince, s, time.Local)
			if err != nil {
				uf.fail("since", "%q is not a time like %q", s, statsSince)
			}
			st.Since = t
		}
		if uf.err != nil {
			return Stats{}, uf.err
		}
	}
	if w := f.section("workers"); w != nil {
		wf := &fields{where: "stats: workers", m: w}
		st.WorkersTotal = int(wf.uint("total", 31))
		st.WorkersIdle = int(wf.uint("idle", 31))
		if wf.err != nil {
			return Stats{}, wf.err
		}
	}
	if ik := f.section("ikesas"); ik != nil {
		kf := &fields{where: "stats: ikesas", m: ik}
		st.IKESAs = int(kf.uint("total", 31))
		st.HalfOpen = int(kf.uint("half-open", 31))
		if kf.err != nil {
			return Stats{}, kf.err
		}
	}
	st.Plugins = f.list("plugins")
	return st, f.err
}

// parseRunning reads charon's %V time delta: "<n> second(s)|minute(s)|hour(s)|day(s)".
func parseRunning(f *fields, key string) time.Duration {
	s := f.str(key)
	if s == "" {
		return 0
	}
	num, unit, ok := strings.Cut(s, " ")
	n, err := strconv.ParseInt(num, 10, 64)
	if !ok || err != nil || n < 0 {
		f.fail(key, "%q is not a duration like \"5 minutes\"", s)
		return 0
	}
	var d time.Duration
	switch strings.TrimSuffix(unit, "s") {
	case "second":
		d = time.Second
	case "minute":
		d = time.Minute
	case "hour":
		d = time.Hour
	case "day":
		d = 24 * time.Hour
	default:
		f.fail(key, "%q has an unknown unit", s)
		return 0
	}
	if n > math.MaxInt64/int64(d) {
		f.fail(key, "%q is out of range", s)
		return 0
	}
	return time.Duration(n) * d
}

func orEmpty(m *govici.Message) *govici.Message {
	if m == nil {
		return govici.NewMessage()
	}
	return m
}

// decodeLog decodes a log or control-log event.
func decodeLog(m *govici.Message) (LogLine, error) {
	f := &fields{where: "log", m: orEmpty(m)}
	l := LogLine{
		Group:   f.str("group"),
		Level:   int(f.int("level", 8)),
		Thread:  int(f.int("thread", 32)),
		IKEName: f.str("ikesa-name"),
		IKEID:   uint32(f.uint("ikesa-uniqueid", 32)),
		Message: f.str("msg"),
	}
	return l, f.err
}

// decodeEvent decodes a server-issued event (ike-updown, child-updown,
// ike-rekey, child-rekey, log) into an Event stamped t.
//
// Layouts (charon 5.9.8, vici_query.c):
//
//	ike-updown:   { up = yes (only when up), <conn> = { <IKE_SA fields> } }
//	child-updown: { up = yes (only when up), <conn> = { <IKE_SA fields>,
//	                child-sas = { <child>-<uniqueid> = { <CHILD_SA fields> } } } }
//	ike-rekey:    { <conn> = { old = { <IKE_SA fields> }, new = { <IKE_SA fields> } } }
//	child-rekey:  { <conn> = { <IKE_SA fields>,
//	                child-sas = { <child> = { old = {...}, new = {...} } } } }
//
// Keys of child-sas are "<child>-<uniqueid>" except in child-rekey, where
// the single key is the child's config name. Sections also carry
// tasks-queued/-active/-passive lists, ignored here.
//
// For ike-rekey, Old and SA are the old and new IKE_SA (no children; the
// CHILD_SAs move to the new IKE_SA and its unique id). For child-rekey both
// Old and SA describe the same IKE_SA; Old.Children holds the old CHILD_SA
// (state REKEYED) and SA.Children the new one (INSTALLED, new unique id and
// SPIs). list-sas keeps showing the old CHILD_SA (REKEYED, then DELETED)
// for charon's delete_rekeyed_delay (5 s).
//
// Order seen on charon 5.9.8: up is ike-updown then child-updown; a
// terminate sends ike-updown (down) before child-updown (down).
func decodeEvent(name string, m *govici.Message, t time.Time) (Event, error) {
	ev := Event{Kind: EventKind(name), Time: t}
	m = orEmpty(m)
	switch ev.Kind {
	case EventLog:
		l, err := decodeLog(m)
		if err != nil {
			return Event{}, err
		}
		ev.Log = &l
		return ev, nil
	case EventIKEUpDown, EventChildUpDown:
		f := &fields{where: name, m: m}
		ev.Up = f.flag("up")
		if f.err != nil {
			return Event{}, f.err
		}
		sa, err := oneSection(name, m, func(conn string, sec *govici.Message) (IKESA, error) {
			return decodeIKE(name, conn, sec, ev.Kind == EventChildUpDown)
		})
		if err != nil {
			return Event{}, err
		}
		ev.SA = &sa
		return ev, nil
	case EventIKERekey:
		var old IKESA
		sa, err := oneSection(name, m, func(conn string, sec *govici.Message) (IKESA, error) {
			f := &fields{where: name + ": IKE_SA " + conn, m: sec}
			o, n := f.section("old"), f.section("new")
			if f.err == nil && (o == nil || n == nil) {
				f.fail("", "old or new section is missing")
			}
			if f.err != nil {
				return IKESA{}, f.err
			}
			var err error
			if old, err = decodeIKE(name+" old", conn, o, false); err != nil {
				return IKESA{}, err
			}
			return decodeIKE(name+" new", conn, n, false)
		})
		if err != nil {
			return Event{}, err
		}
		ev.Old, ev.SA = &old, &sa
		return ev, nil
	case EventChildRekey:
		var old IKESA
		sa, err := oneSection(name, m, func(conn string, sec *govici.Message) (IKESA, error) {
			ike, err := decodeIKE(name, conn, sec, false)
			if err != nil {
				return IKESA{}, err
			}
			where := fmt.Sprintf("%s: IKE_SA %s #%d", name, conn, ike.UniqueID)
			f := &fields{where: where, m: sec}
			cs := f.section("child-sas")
			if f.err == nil && cs == nil {
				f.fail("child-sas", "missing")
			}
			if f.err != nil {
				return IKESA{}, f.err
			}
			keys := cs.Keys()
			if len(keys) != 1 {
				return IKESA{}, malformed(where, "child-sas", "expected one CHILD_SA, got %d", len(keys))
			}
			cf := &fields{where: where + ": child " + keys[0], m: cs}
			pair := cf.section(keys[0])
			var o, n *govici.Message
			if pair != nil {
				pf := &fields{where: cf.where, m: pair}
				o, n = pf.section("old"), pf.section("new")
				cf.err = pf.err
			}
			if cf.err == nil && (o == nil || n == nil) {
				cf.fail("", "old or new section is missing")
			}
			if cf.err != nil {
				return IKESA{}, cf.err
			}
			oc, err := decodeChild(where+": old", keys[0], o)
			if err != nil {
				return IKESA{}, err
			}
			nc, err := decodeChild(where+": new", keys[0], n)
			if err != nil {
				return IKESA{}, err
			}
			old = ike
			old.Children = []ChildSA{oc}
			ike.Children = []ChildSA{nc}
			return ike, nil
		})
		if err != nil {
			return Event{}, err
		}
		ev.Old, ev.SA = &old, &sa
		return ev, nil
	}
	return Event{}, malformed(name, "", "unknown event")
}

// oneSection finds the single IKE_SA section of an event (iterating keys,
// because updown events mix "up" with it) and decodes it with dec.
func oneSection(event string, m *govici.Message, dec func(string, *govici.Message) (IKESA, error)) (IKESA, error) {
	var name string
	var sec *govici.Message
	for _, k := range m.Keys() {
		if s, ok := m.Get(k).(*govici.Message); ok {
			if sec != nil {
				return IKESA{}, malformed(event, "", "more than one IKE_SA section (%s, %s)", name, k)
			}
			name, sec = k, s
		}
	}
	if sec == nil {
		return IKESA{}, malformed(event, "", "no IKE_SA section")
	}
	return dec(name, sec)
}

// decodeListCert reads one list-cert event.
func decodeListCert(m *govici.Message) (Cert, error) {
	f := &fields{where: "list-cert", m: m}
	c := Cert{Type: f.str("type"), Flag: f.str("flag"), HasPrivKey: f.flag("has_privkey"), Subject: f.str("subject")}
	c.Data = []byte(f.str("data"))
	if f.err == nil && c.Type == "" {
		f.fail("type", "missing")
	}
	if f.err == nil && len(c.Data) == 0 {
		f.fail("data", "missing: charon sent a certificate without its encoding")
	}
	return c, f.err
}
