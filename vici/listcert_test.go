package vici

import (
	"errors"
	"testing"
)

func TestDecodeListCert(t *testing.T) {
	tests := []struct {
		name    string
		in      []any
		want    Cert
		wantErr string
	}{
		{"raw key", []any{"type", "PUBKEY", "has_privkey", "yes", "subject", "192.0.2.11", "data", "\x30\x2a"},
			Cert{Type: "PUBKEY", HasPrivKey: true, Subject: "192.0.2.11", Data: []byte("\x30\x2a")}, ""},
		{"x509 ca", []any{"type", "X509", "flag", "CA", "data", "\x30\x82", "not-before", "Nov 23"},
			Cert{Type: "X509", Flag: "CA", Data: []byte("\x30\x82")}, ""},
		{"no type", []any{"data", "x"}, Cert{}, "type"},
		{"no data", []any{"type", "X509"}, Cert{}, "data"},
		{"bad privkey flag", []any{"type", "X509", "data", "x", "has_privkey", "maybe"}, Cert{}, "has_privkey"},
		{"data as list", []any{"type", "X509", "data", []string{"a"}}, Cert{}, "data"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := decodeListCert(msg(tc.in...))
			if tc.wantErr != "" {
				var me *MalformedError
				if !errors.As(err, &me) || me.Field != tc.wantErr {
					t.Fatalf("error %v, want a MalformedError for field %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got.Type != tc.want.Type || got.Flag != tc.want.Flag || got.HasPrivKey != tc.want.HasPrivKey ||
				got.Subject != tc.want.Subject || string(got.Data) != string(tc.want.Data) {
				t.Fatalf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

func FuzzDecodeListCert(f *testing.F) {
	f.Add(encodeBody(msg("type", "PUBKEY", "has_privkey", "yes", "subject", "192.0.2.11", "data", "\x30\x2a")))
	f.Add(encodeBody(msg("type", "X509", "flag", "CA", "data", "\x30\x82")))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := decodeBody(data)
		if err != nil {
			return
		}
		c, err := decodeListCert(m)
		checkDecodeErr(t, err)
		if err == nil && (c.Type == "" || len(c.Data) == 0) {
			t.Fatalf("accepted a cert without type or data: %+v", c)
		}
	})
}
