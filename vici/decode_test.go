package vici

import (
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"testing"
	"time"

	govici "github.com/strongswan/govici/vici"
)

// sampleIKE is an IKE_SA section as charon 5.9.8 lists it (libipsec
// datapath, so NAT is faked and ESP runs over UDP 4500), without child-sas.
func sampleIKE(extra ...any) *govici.Message {
	kv := []any{
		"uniqueid", "3",
		"version", "2",
		"state", "ESTABLISHED",
		"local-host", "192.0.2.11",
		"local-port", "4500",
		"local-id", "192.0.2.11",
		"remote-host", "192.0.2.12",
		"remote-port", "4500",
		"remote-id", "192.0.2.12",
		"initiator", "yes",
		"initiator-spi", "1a2b3c4d5e6f7081",
		"responder-spi", "8877665544332211",
		"nat-fake", "yes",
		"nat-any", "yes",
		"encr-alg", "AES_CBC",
		"encr-keysize", "256",
		"integ-alg", "HMAC_SHA2_256_128",
		"prf-alg", "PRF_HMAC_SHA2_256",
		"dh-group", "CURVE_25519",
		"established", "12",
		"rekey-time", "13987",
		"tasks-queued", []string{},
	}
	return msg(append(kv, extra...)...)
}

// sampleChild is a CHILD_SA section; kv pairs override or add fields.
func sampleChild(over ...any) *govici.Message {
	m := msg(
		"name", "net",
		"uniqueid", "4",
		"reqid", "1",
		"state", "INSTALLED",
		"mode", "TUNNEL",
		"label", "73797374656d5f753a6f626a6563745f723a69707365635f743a733000",
		"protocol", "ESP",
		"encap", "yes",
		"spi-in", "c1d2e3f4",
		"spi-out", "c5d6e7f8",
		"cpi-in", "9abc",
		"cpi-out", "def0",
		"encr-alg", "AES_GCM_16",
		"encr-keysize", "256",
		"dh-group", "CURVE_25519",
		"esn", "1",
		"bytes-in", "840",
		"packets-in", "10",
		"use-in", "2",
		"bytes-out", "1680",
		"packets-out", "20",
		"rekey-time", "3011",
		"life-time", "3503",
		"install-time", "12",
		"local-ts", []string{"192.0.2.11/32"},
		"remote-ts", []string{"192.0.2.12/32"},
	)
	for i := 0; i+1 < len(over); i += 2 {
		if over[i+1] == nil {
			m.Unset(over[i].(string))
			continue
		}
		_ = m.Set(over[i].(string), over[i+1])
	}
	return m
}

func wantIKE() IKESA {
	return IKESA{
		Name: "gw-gw", UniqueID: 3, Version: 2, State: "ESTABLISHED",
		LocalHost: netip.MustParseAddr("192.0.2.11"), LocalPort: 4500, LocalID: "192.0.2.11",
		RemoteHost: netip.MustParseAddr("192.0.2.12"), RemotePort: 4500, RemoteID: "192.0.2.12",
		Initiator: true, InitiatorSPI: "1a2b3c4d5e6f7081", ResponderSPI: "8877665544332211",
		NATFake: true, NATAny: true,
		EncrAlg: "AES_CBC", EncrKeySize: 256, IntegAlg: "HMAC_SHA2_256_128", PRFAlg: "PRF_HMAC_SHA2_256", DHGroup: "CURVE_25519",
		Established: 12 * time.Second, RekeyIn: 13987 * time.Second,
	}
}

func wantChild() ChildSA {
	return ChildSA{
		Name: "net", UniqueID: 4, ReqID: 1, State: "INSTALLED", Mode: "TUNNEL", Protocol: "ESP", Encap: true,
		SPIIn: "c1d2e3f4", SPIOut: "c5d6e7f8", CPIIn: "9abc", CPIOut: "def0",
		EncrAlg: "AES_GCM_16", EncrKeySize: 256, DHGroup: "CURVE_25519", ESN: true,
		Label:   "system_u:object_r:ipsec_t:s0",
		BytesIn: 840, PacketsIn: 10, BytesOut: 1680, PacketsOut: 20,
		UseIn: 2 * time.Second, UseOut: -1, RekeyIn: 3011 * time.Second, LifeIn: 3503 * time.Second, InstallTime: 12 * time.Second,
		LocalTS: []string{"192.0.2.11/32"}, RemoteTS: []string{"192.0.2.12/32"},
	}
}

func listSA(name string, ike *govici.Message, children ...any) *govici.Message {
	_ = ike.Set("child-sas", msg(children...))
	return msg(name, ike)
}

func TestDecodeListSA(t *testing.T) {
	full := wantIKE()
	full.Children = []ChildSA{wantChild()}

	noESN := wantChild()
	noESN.ESN, noESN.CPIIn, noESN.CPIOut, noESN.Label = false, "", "", ""

	connecting := IKESA{Name: "oe-10-2-0-10", UniqueID: 9, Version: 2, State: "CONNECTING",
		LocalHost: netip.MustParseAddr("192.0.2.11"), LocalPort: 500}

	tests := []struct {
		name string
		in   *govici.Message
		want []IKESA
	}{
		{"full", listSA("gw-gw", sampleIKE(), "net-4", sampleChild()), []IKESA{full}},
		{"no esn, no ipcomp, no label", listSA("gw-gw", sampleIKE(), "net-4",
			sampleChild("esn", nil, "cpi-in", nil, "cpi-out", nil, "label", nil)),
			[]IKESA{func() IKESA { s := wantIKE(); s.Children = []ChildSA{noESN}; return s }()}},
		{"name from key", listSA("gw-gw", sampleIKE(), "net-4", sampleChild("name", nil)), []IKESA{full}},
		{"connecting, %any peer, no children", msg("oe-10-2-0-10", msg(
			"uniqueid", "9", "version", "2", "state", "CONNECTING",
			"local-host", "192.0.2.11", "local-port", "500", "remote-host", "%any", "child-sas", msg())),
			[]IKESA{connecting}},
		{"empty", msg(), nil},
		{"label without NUL", listSA("gw-gw", sampleIKE(), "net-4", sampleChild("label", "6c6f77")),
			[]IKESA{func() IKESA {
				s := full
				c := wantChild()
				c.Label = "low"
				s.Children = []ChildSA{c}
				return s
			}()}},
		{"ipv6 and vips", msg("v6", msg("uniqueid", "1", "local-host", "2001:db8::1", "remote-host", "2001:db8::2",
			"local-vips", []string{"10.3.0.1"}, "remote-vips", []string{"10.3.0.2", "fd00::2"})),
			[]IKESA{{Name: "v6", UniqueID: 1, LocalHost: netip.MustParseAddr("2001:db8::1"), RemoteHost: netip.MustParseAddr("2001:db8::2"),
				LocalVIPs: []string{"10.3.0.1"}, RemoteVIPs: []string{"10.3.0.2", "fd00::2"}}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := decodeListSA(tt.in)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got\n%+v\nwant\n%+v", got, tt.want)
			}
		})
	}
}

func TestDecodeListSAMalformed(t *testing.T) {
	tests := []struct {
		name string
		in   *govici.Message
		want string
	}{
		{"bytes-in", listSA("gw-gw", sampleIKE(), "net-4", sampleChild("bytes-in", "x")),
			`list-sas: IKE_SA gw-gw #3: child net #4: bytes-in: "x" is not a number`},
		{"negative packets", listSA("gw-gw", sampleIKE(), "net-4", sampleChild("packets-out", "-1")),
			`list-sas: IKE_SA gw-gw #3: child net #4: packets-out: "-1" is not a number`},
		{"label hex", listSA("gw-gw", sampleIKE(), "net-4", sampleChild("label", "7g")),
			`list-sas: IKE_SA gw-gw #3: child net #4: label: "7g" is not hex`},
		{"child uniqueid", listSA("gw-gw", sampleIKE(), "net-4", sampleChild("uniqueid", "four")),
			`list-sas: IKE_SA gw-gw #3: child net-4: uniqueid: "four" is not a number`},
		{"ike uniqueid", msg("gw-gw", sampleIKE("uniqueid", "3x")),
			`list-sas: IKE_SA gw-gw: uniqueid: "3x" is not a number`},
		{"host", msg("gw-gw", sampleIKE("remote-host", "192.0.2.300")),
			`list-sas: IKE_SA gw-gw #3: remote-host: "192.0.2.300" is not an IP address`},
		{"port range", msg("gw-gw", sampleIKE("local-port", "65536")),
			`list-sas: IKE_SA gw-gw #3: local-port: "65536" is not a number`},
		{"flag", msg("gw-gw", sampleIKE("initiator", "maybe")),
			`list-sas: IKE_SA gw-gw #3: initiator: "maybe" is not yes or no`},
		{"established overflow", msg("gw-gw", sampleIKE("established", "99999999999999999")),
			`list-sas: IKE_SA gw-gw #3: established: "99999999999999999" seconds is out of range`},
		{"list where value", msg("gw-gw", sampleIKE("state", []string{"a"})),
			`list-sas: IKE_SA gw-gw #3: state: expected a value, got a list`},
		{"value where list", listSA("gw-gw", sampleIKE(), "net-4", sampleChild("local-ts", "10.0.0.0/8")),
			`list-sas: IKE_SA gw-gw #3: child net #4: local-ts: expected a list, got a value`},
		{"child-sas value", msg("gw-gw", sampleIKE("child-sas", "none")),
			`list-sas: IKE_SA gw-gw #3: child-sas: expected a section, got a value`},
		{"child not a section", listSA("gw-gw", sampleIKE(), "net-4", "x"),
			`list-sas: IKE_SA gw-gw #3: child-sas: net-4: expected a CHILD_SA section, got a value`},
		{"top-level value", msg("gw-gw", "x"),
			`list-sas: gw-gw: expected an IKE_SA section, got a value`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := decodeListSA(tt.in)
			if err == nil {
				t.Fatalf("no error; got %+v", got)
			}
			if err.Error() != tt.want {
				t.Errorf("error\n%s\nwant\n%s", err, tt.want)
			}
			if !errors.Is(err, ErrMalformed) {
				t.Errorf("error does not wrap ErrMalformed")
			}
		})
	}
}

func TestDecodeEvents(t *testing.T) {
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	ike := wantIKE()
	withChild := func(c ChildSA) *IKESA { s := wantIKE(); s.Children = []ChildSA{c}; return &s }
	newChild := wantChild()
	newChild.UniqueID, newChild.SPIIn, newChild.BytesIn = 5, "cafe0001", 0
	newIKE := wantIKE()
	newIKE.UniqueID, newIKE.InitiatorSPI = 7, "0102030405060708"

	tests := []struct {
		name  string
		event string
		in    *govici.Message
		want  Event
	}{
		{"ike up", "ike-updown", msg("up", "yes", "gw-gw", sampleIKE()),
			Event{Kind: EventIKEUpDown, Time: at, Up: true, SA: &ike}},
		{"ike down, section first", "ike-updown", msg("gw-gw", sampleIKE()),
			Event{Kind: EventIKEUpDown, Time: at, SA: &ike}},
		{"child up", "child-updown", msg("up", "yes", "gw-gw", sampleIKE("child-sas", msg("net-4", sampleChild()))),
			Event{Kind: EventChildUpDown, Time: at, Up: true, SA: withChild(wantChild())}},
		{"ike rekey", "ike-rekey", msg("gw-gw", msg("old", sampleIKE(), "new", sampleIKE("uniqueid", "7", "initiator-spi", "0102030405060708"))),
			Event{Kind: EventIKERekey, Time: at, Old: &ike, SA: &newIKE}},
		{"child rekey", "child-rekey", msg("gw-gw", sampleIKE("child-sas", msg("net", msg(
			"old", sampleChild(),
			"new", sampleChild("uniqueid", "5", "spi-in", "cafe0001", "bytes-in", "0"))))),
			Event{Kind: EventChildRekey, Time: at, Old: withChild(wantChild()), SA: withChild(newChild)}},
		{"log", "log", msg("group", "IKE", "level", "1", "thread", "12", "ikesa-name", "gw-gw", "ikesa-uniqueid", "3",
			"msg", "IKE_SA gw-gw[3] established between 192.0.2.11[192.0.2.11]...192.0.2.12[192.0.2.12]"),
			Event{Kind: EventLog, Time: at, Log: &LogLine{Group: "IKE", Level: 1, Thread: 12, IKEName: "gw-gw", IKEID: 3,
				Message: "IKE_SA gw-gw[3] established between 192.0.2.11[192.0.2.11]...192.0.2.12[192.0.2.12]"}}},
		{"log without SA", "log", msg("group", "CFG", "level", "0", "thread", "1", "msg", "loaded"),
			Event{Kind: EventLog, Time: at, Log: &LogLine{Group: "CFG", Thread: 1, Message: "loaded"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := decodeEvent(tt.event, tt.in, at)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got\n%s\nwant\n%s", dump(got), dump(tt.want))
			}
		})
	}
}

func dump(ev Event) string {
	var sa, old, log any
	if ev.SA != nil {
		sa = *ev.SA
	}
	if ev.Old != nil {
		old = *ev.Old
	}
	if ev.Log != nil {
		log = *ev.Log
	}
	return fmt.Sprintf("%s up=%v\n SA:  %+v\n Old: %+v\n Log: %+v", ev.Kind, ev.Up, sa, old, log)
}

func TestDecodeEventsMalformed(t *testing.T) {
	tests := []struct {
		name, event string
		in          *govici.Message
		want        string
	}{
		{"no section", "ike-updown", msg("up", "yes"), "ike-updown: no IKE_SA section"},
		{"two sections", "child-updown", msg("a", sampleIKE(), "b", sampleIKE()), "child-updown: more than one IKE_SA section (a, b)"},
		{"bad up", "ike-updown", msg("up", []string{"yes"}, "a", sampleIKE()), "ike-updown: up: expected a value, got a list"},
		{"rekey without new", "ike-rekey", msg("a", msg("old", sampleIKE())), "ike-rekey: IKE_SA a: old or new section is missing"},
		{"child rekey without pair", "child-rekey", msg("a", sampleIKE("child-sas", msg("net", msg("old", sampleChild())))),
			"child-rekey: IKE_SA a #3: child net: old or new section is missing"},
		{"child rekey two", "child-rekey", msg("a", sampleIKE("child-sas", msg("x", msg(), "y", msg()))),
			"child-rekey: IKE_SA a #3: child-sas: expected one CHILD_SA, got 2"},
		{"child rekey bad new", "child-rekey", msg("a", sampleIKE("child-sas", msg("net", msg("old", sampleChild(), "new", sampleChild("bytes-in", "1e3"))))),
			`child-rekey: IKE_SA a #3: new: child net #4: bytes-in: "1e3" is not a number`},
		{"log level", "log", msg("level", "high"), `log: level: "high" is not a number`},
		{"unknown", "alert", msg(), "alert: unknown event"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := decodeEvent(tt.event, tt.in, time.Time{})
			if err == nil || err.Error() != tt.want {
				t.Errorf("error %v, want %s", err, tt.want)
			}
		})
	}
}

func TestDecodeListConn(t *testing.T) {
	// As charon 5.9.8 lists a conn with raw public keys and a labeled child.
	in := msg("host-host", msg(
		"local_addrs", []string{"192.0.2.11"},
		"remote_addrs", []string{"192.0.2.12"},
		"version", "IKEv2",
		"reauth_time", "0",
		"rekey_time", "14400",
		"unique", "UNIQUE_NO",
		"local-1", msg("class", "public key", "id", "192.0.2.11", "groups", []string{}, "cert_policy", []string{}, "certs", []string{}, "cacerts", []string{}),
		"remote-1", msg("class", "public key", "id", "192.0.2.12", "groups", []string{}, "cert_policy", []string{}, "certs", []string{"192.0.2.12"}, "cacerts", []string{}),
		"remote-2", msg("class", "EAP", "eap-type", "MSCHAPV2", "eap_id", "bob", "groups", []string{"admins"}),
		"children", msg("net", msg(
			"mode", "TUNNEL",
			"label", "73797374656d5f753a6f626a6563745f723a69707365635f743a733000",
			"rekey_time", "3600", "rekey_bytes", "0", "rekey_packets", "0",
			"dpd_action", "clear", "close_action", "none",
			"local-ts", []string{"dynamic"}, "remote-ts", []string{"dynamic"},
			"priority", "100")),
	))
	want := []ConnInfo{{
		Name: "host-host", Version: "IKEv2", LocalAddrs: []string{"192.0.2.11"}, RemoteAddrs: []string{"192.0.2.12"},
		RekeyTime: 4 * time.Hour, Unique: "UNIQUE_NO",
		Local: []AuthInfo{{Class: "public key", ID: "192.0.2.11", Groups: []string{}, CertPolicy: []string{}, Certs: []string{}, CACerts: []string{}}},
		Remote: []AuthInfo{
			{Class: "public key", ID: "192.0.2.12", Groups: []string{}, CertPolicy: []string{}, Certs: []string{"192.0.2.12"}, CACerts: []string{}},
			{Class: "EAP", EAPID: "bob", Groups: []string{"admins"}},
		},
		Children: []ChildInfo{{Name: "net", Mode: "TUNNEL", Label: "system_u:object_r:ipsec_t:s0",
			LocalTS: []string{"dynamic"}, RemoteTS: []string{"dynamic"}, DPDAction: "clear", CloseAction: "none",
			RekeyTime: time.Hour, Priority: 100}},
	}}
	got, err := decodeListConn(in)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got\n%+v\nwant\n%+v", got, want)
	}

	bad := msg("c", msg("children", msg("net", msg("label", "zz"))))
	if _, err := decodeListConn(bad); err == nil || err.Error() != `list-conns: conn c: child net: label: "zz" is not hex` {
		t.Errorf("bad label: %v", err)
	}
}

func TestDecodeStats(t *testing.T) {
	in := msg(
		"uptime", msg("running", "5 minutes", "since", "Nov 23 18:25:20 2026"),
		"workers", msg("total", "16", "idle", "7", "active", msg("critical", "4", "high", "0", "medium", "5", "low", "0")),
		"queues", msg("critical", "0", "high", "0", "medium", "0", "low", "0"),
		"scheduled", "0",
		"ikesas", msg("total", "2", "half-open", "1"),
		"plugins", []string{"charon-systemd", "kernel-libipsec", "vici"},
		"mallinfo", msg("sbrk", "2568192"),
	)
	got, err := decodeStats(in)
	if err != nil {
		t.Fatal(err)
	}
	want := Stats{
		Since:  time.Date(2026, 11, 23, 18, 25, 20, 0, time.Local),
		Uptime: 5 * time.Minute, IKESAs: 2, HalfOpen: 1, WorkersTotal: 16, WorkersIdle: 7,
		Plugins: []string{"charon-systemd", "kernel-libipsec", "vici"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %+v\nwant %+v", got, want)
	}
	for _, tt := range []struct {
		in   *govici.Message
		want string
	}{
		{msg("uptime", msg("running", "1 second")), ""},
		{msg("uptime", msg("running", "3 days")), ""},
		{msg("uptime", msg("running", "soon")), `stats: uptime: running: "soon" is not a duration like "5 minutes"`},
		{msg("uptime", msg("running", "3 fortnights")), `stats: uptime: running: "3 fortnights" has an unknown unit`},
		{msg("uptime", msg("since", "yesterday")), `stats: uptime: since: "yesterday" is not a time like "Jan 02 15:04:05 2006"`},
		{msg("ikesas", msg("total", "-1")), `stats: ikesas: total: "-1" is not a number`},
		{msg("plugins", "vici"), `stats: plugins: expected a list, got a value`},
	} {
		_, err := decodeStats(tt.in)
		if (err == nil) != (tt.want == "") || (err != nil && err.Error() != tt.want) {
			t.Errorf("%s: error %v, want %q", tt.in, err, tt.want)
		}
	}
}
