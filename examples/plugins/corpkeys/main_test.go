package main

import (
	"encoding/base64"
	"strings"
	"testing"

	"github.com/obol-ipsec/obol/plugins"
)

func TestParseEntry(t *testing.T) {
	k := base64.StdEncoding.EncodeToString(make([]byte, 32))
	tests := []struct{ in, errWant, gw string }{
		{"ed25519 " + k, "", ""},
		{"ed25519 " + k + " gateway 192.0.2.2", "", "192.0.2.2"},
		{"ed25519 AAAA", "ed25519 key of 3 bytes", ""},
		{"dsa " + k, "algorithm \"dsa\"", ""},
		{"ed25519 " + k + " via 192.0.2.2", "want \"gateway ADDR\"", ""},
		{"ed25519", "want \"ALG BASE64\"", ""},
	}
	for _, tc := range tests {
		var gw plugins.Gateway
		err := parseEntry(tc.in, &gw)
		if (tc.errWant == "") != (err == nil) || err != nil && !strings.Contains(err.Error(), tc.errWant) {
			t.Errorf("%q: err %v, want %q", tc.in, err, tc.errWant)
			continue
		}
		if err == nil && (len(gw.Keys) != 1 || tc.gw != "" && gw.Addr.String() != tc.gw) {
			t.Errorf("%q: gateway %+v", tc.in, gw)
		}
	}
}

func FuzzParseEntry(f *testing.F) {
	f.Add("ed25519 " + base64.StdEncoding.EncodeToString(make([]byte, 32)) + " gateway 192.0.2.2")
	f.Fuzz(func(t *testing.T, s string) {
		var gw plugins.Gateway
		if parseEntry(s, &gw) == nil && len(gw.Keys) != 1 {
			t.Fatalf("%q accepted without exactly one key", s)
		}
	})
}
