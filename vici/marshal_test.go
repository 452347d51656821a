package vici

import (
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestMarshalConn(t *testing.T) {
	no := false
	der1, der2 := []byte{0x30, 0x2a, 0x00, 0xff}, []byte("-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA\n-----END PUBLIC KEY-----\n")
	tests := []struct {
		name string
		in   Conn
		want string // govici's String() of the message: ordered, swanctl-like
	}{
		{
			name: "psk host-to-host",
			in: Conn{
				Name: "psk", Version: 2,
				LocalAddrs: []string{"192.0.2.11"}, RemoteAddrs: []string{"192.0.2.12"},
				Local:  []Auth{{Auth: "psk", ID: "192.0.2.11"}},
				Remote: []Auth{{Auth: "psk", ID: "192.0.2.12"}},
				Children: []Child{{Name: "net", Mode: "tunnel", LocalTS: []string{"192.0.2.11/32"}, RemoteTS: []string{"192.0.2.12/32"},
					ESPProposals: []string{"aes256gcm16-x25519", "default"}, StartAction: "none"}},
			},
			want: `{
  psk {
    version = 2
    local_addrs = 192.0.2.11
    remote_addrs = 192.0.2.12
    local-1 {
      auth = psk
      id = 192.0.2.11
      round = 1
    }
    remote-1 {
      auth = psk
      id = 192.0.2.12
      round = 1
    }
    children {
      net {
        mode = tunnel
        local_ts = 192.0.2.11/32
        remote_ts = 192.0.2.12/32
        esp_proposals = aes256gcm16-x25519,default
        start_action = none
      }
    }
  }
}
`,
		},
		{
			name: "pubkeys, two rounds, every option",
			in: Conn{
				Name: "pk", LocalAddrs: []string{"%any"}, RemoteAddrs: []string{"192.0.2.12", "2001:db8::12"},
				LocalPort: 4500, RemotePort: 4501, Proposals: []string{"aes256-sha256-x25519"}, Encap: true, Mobike: &no,
				DPDDelay: 30 * time.Second, RekeyTime: 4 * time.Hour, ReauthTime: 1500 * time.Millisecond, OverTime: 0,
				Unique: "replace", KeyingTries: 1,
				Local: []Auth{{Auth: "pubkey", ID: "192.0.2.11"}},
				Remote: []Auth{
					{Auth: "pubkey", ID: "192.0.2.12", Pubkeys: [][]byte{der1, der2}, Certs: [][]byte{der1}, CACerts: [][]byte{der2},
						CertPolicy: []string{"1.2.3"}, RevocationPolicy: "strict"},
					{Auth: "eap-mschapv2", EAPID: "bob", Groups: []string{"admins"}},
				},
				Children: []Child{
					{Name: "a", Mode: "tunnel", LocalTS: []string{"dynamic"}, RemoteTS: []string{"dynamic"}, CloseAction: "none", DPDAction: "clear",
						Inactivity: 5 * time.Minute, RekeyTime: time.Hour, LifeTime: 66 * time.Minute, IPComp: true,
						Label: "system_u:object_r:ipsec_t:s0", LabelMode: "simple", Updown: "/usr/lib/obol/updown", Priority: 100},
					{Name: "b"},
				},
			},
			want: `{
  pk {
    local_addrs = %any
    remote_addrs = 192.0.2.12,2001:db8::12
    local_port = 4500
    remote_port = 4501
    proposals = aes256-sha256-x25519
    encap = yes
    mobike = no
    dpd_delay = 30s
    rekey_time = 14400s
    reauth_time = 2s
    unique = replace
    keyingtries = 1
    local-1 {
      auth = pubkey
      id = 192.0.2.11
      round = 1
    }
    remote-1 {
      auth = pubkey
      id = 192.0.2.12
      cert_policy = 1.2.3
      revocation = strict
      certs = ` + string(der1) + `
      cacerts = ` + string(der2) + `
      pubkeys = ` + string(der1) + "," + string(der2) + `
      round = 1
    }
    remote-2 {
      auth = eap-mschapv2
      eap_id = bob
      groups = admins
      round = 2
    }
    children {
      a {
        mode = tunnel
        local_ts = dynamic
        remote_ts = dynamic
        close_action = none
        dpd_action = clear
        inactivity = 300s
        rekey_time = 3600s
        life_time = 3960s
        ipcomp = yes
        label = system_u:object_r:ipsec_t:s0
        label_mode = simple
        updown = /usr/lib/obol/updown
        priority = 100
      }
      b {
      }
    }
  }
}
`,
		},
		{
			name: "minimal",
			in:   Conn{Name: "m"},
			want: "{\n  m {\n  }\n}\n",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := marshalConn(tt.in)
			if err != nil {
				t.Fatal(err)
			}
			if got := m.String(); got != tt.want {
				t.Errorf("got\n%s\nwant\n%s", got, tt.want)
			}
			// Blobs must reach the wire byte for byte.
			if _, err := decodeBody(encodeBody(m)); err != nil {
				t.Errorf("encoded message does not decode: %v", err)
			}
		})
	}
}

// TestMarshalConnRoundsOrder checks that many auth rounds keep their order
// and explicit round numbers, and that raw key bytes survive the wire.
func TestMarshalConnRoundsOrder(t *testing.T) {
	blob := []byte{0, 1, 2, 0xfe, 0xff, '\n', 0}
	c := Conn{Name: "r"}
	for i := 0; i < 12; i++ {
		c.Local = append(c.Local, Auth{Auth: "pubkey", ID: strings.Repeat("x", i+1)})
	}
	c.Remote = []Auth{{Auth: "pubkey", Pubkeys: [][]byte{blob}}}
	m, err := marshalConn(c)
	if err != nil {
		t.Fatal(err)
	}
	m, err = decodeBody(encodeBody(m))
	if err != nil {
		t.Fatal(err)
	}
	f := &fields{m: m}
	sec := f.section("r")
	keys := sec.Keys()
	for i := 0; i < 12; i++ {
		want := "local-" + strconv.Itoa(i+1)
		if keys[i] != want {
			t.Fatalf("key %d is %s, want %s (keys %v)", i, keys[i], want, keys)
		}
		a := (&fields{m: sec}).section(want)
		if r := a.Get("round"); r != strconv.Itoa(i+1) {
			t.Errorf("%s: round %v", want, r)
		}
		if id := a.Get("id"); id != strings.Repeat("x", i+1) {
			t.Errorf("%s: id %v", want, id)
		}
	}
	pk := (&fields{m: sec}).section("remote-1").Get("pubkeys").([]string)
	if len(pk) != 1 || pk[0] != string(blob) {
		t.Errorf("pubkeys %q, want %q", pk, blob)
	}
}

func TestMarshalConnErrors(t *testing.T) {
	tests := []struct {
		name string
		in   Conn
		want string
	}{
		{"no name", Conn{}, "vici: load-conn: conn has no name: give it one"},
		{"space", Conn{Name: "a b"}, `vici: load-conn: conn name "a b" contains white space: swanctl could not name it`},
		{"version", Conn{Name: "v", Version: 3}, `vici: load-conn "v": version 3: use 1, 2 or 0 (any)`},
		{"negative", Conn{Name: "d", DPDDelay: -time.Second}, `vici: load-conn "d": dpd_delay: negative duration -1s`},
		{"child dup", Conn{Name: "c", Children: []Child{{Name: "x"}, {Name: "x"}}}, `vici: load-conn "c": child "x" appears twice: children need distinct names`},
		{"child no name", Conn{Name: "c", Children: []Child{{}}}, `vici: load-conn: child of conn "c" has no name: give it one`},
		{"huge cert", Conn{Name: "h", Remote: []Auth{{Certs: [][]byte{make([]byte, 70000)}}}},
			`vici: load-conn "h": remote-1: certs[0]: 70000 bytes is longer than the 65535 VICI allows`},
		{"empty key", Conn{Name: "k", Remote: []Auth{{Pubkeys: [][]byte{{1}, nil}}}},
			`vici: load-conn "k": remote-1: pubkeys[1] is empty: give the PEM or DER data`},
		{"child lifetime", Conn{Name: "c", Children: []Child{{Name: "x", LifeTime: -1}}}, `vici: load-conn "c": child "x": life_time: negative duration -1ns`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := marshalConn(tt.in)
			if err == nil || err.Error() != tt.want {
				t.Errorf("error %v\nwant %s", err, tt.want)
			}
		})
	}
}
